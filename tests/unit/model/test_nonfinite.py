"""A diverging run is never saved: non-finite losses, gradients, teacher features, logits and weights stop the
step with an error that says where."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from clipcite.data.table import read_table
from clipcite.evaluation.predict import predict
from clipcite.model.clip import load_model
from clipcite.model.nonfinite import NonFiniteError
from clipcite.steps import finetune, sample_splits
from clipcite.training import candidate
from clipcite.training.loop import FitParams, fit
from clipcite.training.methods import cite
from clipcite.training.teacher_cache import build_cache
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def splits(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("nonfinite") / "splits"
    sample_splits.run(str(table), str(out), tiny_config("splits.shots=4"))
    return out


def test_diverging_run_stops_and_writes_no_model(splits, tmp_path):
    config = tiny_config("train.lr=1e12", "train.epochs=2", "train.batch_size=4", "teacher.mode=online")
    out = tmp_path / "model"
    with pytest.raises(NonFiniteError) as error:
        finetune.run(str(splits), str(out), config, checkpoint_dir=str(tmp_path / "ckpt"))
    message = str(error.value)
    assert f"{splits / 'train'}: step 2 (epoch 1/2): loss term(s) " in message  # step 1 moved the weights to inf
    assert "total=nan" in message and "train.on_nonfinite=skip" in message
    assert not out.exists() and not (tmp_path / "ckpt" / "last.pt").exists()


def _poison_step(monkeypatch, bad_step: int):
    """batch_losses returns a NaN total on call ``bad_step`` (1-based), the real losses otherwise."""
    real, calls = cite.batch_losses, []

    def poisoned(*args, **kwargs):
        losses = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == bad_step:
            losses = {**losses, "scl": losses["scl"] * float("nan")}
            losses["total"] = losses["total"] + losses["scl"]
        return losses

    monkeypatch.setattr(cite, "batch_losses", poisoned)


def test_skip_mode_skips_the_bad_step_and_counts_it(splits, monkeypatch):
    rows = read_table(str(splits / "train")).to_pylist()
    prompts = [f"a photo of a {i}." for i in range(3)]
    params = FitParams(epochs=1, batch_size=4, lr=1e-4, eta=0.0)
    _poison_step(monkeypatch, 2)
    with pytest.raises(NonFiniteError, match=r"step 2 \(epoch 1/1\): loss term\(s\) scl=nan, total=nan"):
        fit(load_model("clipcite-tiny", ""), rows, prompts, params, seed=1)
    _poison_step(monkeypatch, 2)
    logged = []
    result = fit(
        load_model("clipcite-tiny", ""),
        rows,
        prompts,
        dataclasses.replace(params, on_nonfinite="skip"),
        seed=1,
        log_fn=lambda m, s: logged.append(m),
    )
    assert result.skipped_steps == 1 and result.steps == 3  # 12 images, batch 4: the skipped step still counts
    assert all(bool(torch.isfinite(v).all()) for v in result.state_dict.values() if v.is_floating_point())


def test_finetune_refuses_to_save_nonfinite_weights(splits, tmp_path, monkeypatch):
    real = candidate.fit

    def broken(*args, **kwargs):
        result = real(*args, **kwargs)
        key = next(k for k, v in result.state_dict.items() if v.is_floating_point())
        result.state_dict[key] = result.state_dict[key] * float("inf")
        return result

    monkeypatch.setattr(candidate, "fit", broken)  # finetune trains through training.candidate
    config = tiny_config("train.epochs=1", "train.method=ce")
    with pytest.raises(NonFiniteError, match="no model written"):
        finetune.run(str(splits), str(tmp_path / "model"), config)
    assert not (tmp_path / "model").exists()


def _nan_visual(model):
    with torch.no_grad():
        model.model.visual.conv1.weight[0, 0, 0, 0] = float("nan")
    return model


def test_teacher_cache_refuses_nonfinite_features(splits):
    rows = read_table(str(splits / "train")).to_pylist()
    with pytest.raises(NonFiniteError, match=r"teacher image features, epoch 1; check the base model.*id="):
        build_cache(
            _nan_visual(load_model("clipcite-tiny", "")),
            rows,
            ["a photo of a x."],
            seed=1,
            epochs=1,
            crop_scale=(0.9, 1.0),
            crop_ratio=(1.0, 1.0),
        )


def test_evaluation_refuses_nonfinite_logits(splits):
    rows = read_table(str(splits / "eval" / "photo-base")).to_pylist()
    with pytest.raises(NonFiniteError, match=r"photo-base: evaluation logits: not finite for \d+ of \d+, e.g. \['id="):
        predict(_nan_visual(load_model("clipcite-tiny", "")), rows, ["a", "b", "c"], source="photo-base: ")
