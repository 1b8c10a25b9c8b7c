"""Teacher cache equivalence, cache refusal, training methods and exact resume (CPU, fixed seeds)."""

import dataclasses

import pytest
import torch

from clipcite.crops import crop_params
from clipcite.data.table import read_table
from clipcite.models import load_model
from clipcite.prompts import prompts_for
from clipcite.steps.sample_splits import run as sample_splits
from clipcite.teacher import CacheMismatchError, build_cache, check_cache
from clipcite.train import FitParams, fit

from .conftest import tiny_config

PARAMS = FitParams(epochs=2, batch_size=8, lr=1e-4)


@pytest.fixture(scope="module")
def train_rows(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("splits") / "splits"
    sample_splits(str(table), str(out), tiny_config("splits.shots=4"))
    rows = read_table(str(out / "train")).to_pylist()
    names = sorted({(r["label"], r["classname"]) for r in rows})
    return rows, prompts_for("a photo of a {}.", [n for _, n in names])


def make_cache(rows, prompts, teacher, epochs=2, seed=1):
    return build_cache(
        teacher, rows, prompts, seed=seed, epochs=epochs, crop_scale=PARAMS.crop_scale, crop_ratio=PARAMS.crop_ratio
    )


def run_fit(rows, prompts, params=PARAMS, **kwargs):
    logged = []
    result = fit(
        load_model("clipcite-tiny", ""),
        rows,
        prompts,
        params,
        seed=1,
        log_fn=lambda m, s: logged.append((s, m)),
        **kwargs,
    )
    return result, logged


def test_crop_params_are_deterministic_and_vary_by_epoch():
    a = crop_params(64, 48, 1, "x", 0)
    assert a == crop_params(64, 48, 1, "x", 0)
    assert len({crop_params(64, 48, 1, "x", epoch) for epoch in range(10)}) > 5  # a new crop each epoch
    assert len({crop_params(64, 48, seed, "x", 0) for seed in range(10)}) > 5  # and per seed
    top, left, h, w = a
    assert top >= 0 and top + h <= 48 and left >= 0 and left + w <= 64


def test_cached_teacher_gives_the_same_losses_as_the_online_teacher(train_rows):
    rows, prompts = train_rows
    cache = make_cache(rows, prompts, load_model("clipcite-tiny", ""))
    _, with_cache = run_fit(rows, prompts, cache=cache)
    _, online = run_fit(rows, prompts, teacher=load_model("clipcite-tiny", ""))
    assert len(rows) == 12  # 3 base classes x 4 shots
    assert len(with_cache) == len(online) == 2 * 2  # 2 batches of <= 8, 2 epochs
    for (step_a, a), (step_b, b) in zip(with_cache, online, strict=True):
        assert step_a == step_b
        for term in ("dva", "scl", "vld", "total"):
            assert a[term] == pytest.approx(b[term], rel=1e-3), (step_a, term)
    assert with_cache[0][1]["vld"] == pytest.approx(0.0, abs=1e-4)  # student == teacher at the first step


def test_cache_from_another_model_or_seed_is_refused(train_rows):
    rows, prompts = train_rows
    cache = make_cache(rows, prompts, load_model("clipcite-tiny", "", init_seed=7), epochs=1)
    common = dict(
        seed=1,
        epochs=1,
        ids=[r["id"] for r in rows],
        prompts=prompts,
        crop_scale=PARAMS.crop_scale,
        crop_ratio=PARAMS.crop_ratio,
    )
    with pytest.raises(CacheMismatchError, match=r"made with model 'random:clipcite-tiny:7'.*uses 'random:clipc"):
        check_cache(cache, identity="random:clipcite-tiny:0", **common)
    with pytest.raises(CacheMismatchError, match="seed 1, training uses seed 2"):
        check_cache(cache, identity=cache.meta.identity, **{**common, "seed": 2})
    with pytest.raises(CacheMismatchError, match="1 epoch.*needs 3"):
        check_cache(cache, identity=cache.meta.identity, **{**common, "epochs": 3})


def test_resumed_run_ends_with_the_same_weights(train_rows, tmp_path):
    rows, prompts = train_rows
    teacher = load_model("clipcite-tiny", "")
    params = dataclasses.replace(PARAMS, epochs=3)
    full, _ = run_fit(rows, prompts, params, teacher=teacher)

    class Interrupt(Exception):
        pass

    def stop_in_epoch_three(metrics, step):
        if metrics["epoch"] == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(
            load_model("clipcite-tiny", ""),
            rows,
            prompts,
            params,
            seed=1,
            teacher=teacher,
            checkpoint_dir=tmp_path,
            log_fn=stop_in_epoch_three,
        )
    assert (tmp_path / "last.pt").is_file()
    resumed, logged = run_fit(rows, prompts, params, teacher=teacher, checkpoint_dir=tmp_path)
    assert [s for s, _ in logged] == [5, 6]  # only epoch 3 (2 batches) ran again
    assert resumed.steps == full.steps == 6
    for key, value in full.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key


def test_checkpoint_of_another_run_is_refused(train_rows, tmp_path):
    rows, prompts = train_rows
    params = dataclasses.replace(PARAMS, epochs=1, eta=0.0)
    fit(load_model("clipcite-tiny", ""), rows, prompts, params, seed=1, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="another run"):
        fit(
            load_model("clipcite-tiny", ""),
            rows,
            prompts,
            dataclasses.replace(params, lr=1e-3),
            seed=1,
            checkpoint_dir=tmp_path,
        )


@pytest.mark.parametrize(
    ("method", "terms"),
    [("ce", {"dva"}), ("flyp", {"clip"}), ("cite", {"dva", "scl", "vld"})],
)
def test_methods_log_their_terms_and_change_the_weights(train_rows, method, terms):
    rows, prompts = train_rows
    params = dataclasses.replace(PARAMS, method=method, epochs=1, alpha=1.0)
    result, logged = run_fit(rows, prompts, params, teacher=load_model("clipcite-tiny", ""))
    assert set(logged[0][1]) == terms | {"total", "lr", "epoch"}
    start = load_model("clipcite-tiny", "").model.state_dict()
    assert not torch.equal(result.state_dict["visual.conv1.weight"], start["visual.conv1.weight"])
    text_key = "transformer.resblocks.0.mlp.c_fc.weight"
    text_moved = not torch.equal(result.state_dict[text_key], start[text_key])
    assert text_moved == (method != "ce")  # L_DVA gives the text encoder no gradient


def test_zeroshot_and_alpha_zero_return_the_pretrained_weights(train_rows):
    rows, prompts = train_rows
    start = load_model("clipcite-tiny", "").model.state_dict()
    for params in (
        dataclasses.replace(PARAMS, method="zeroshot"),
        dataclasses.replace(PARAMS, epochs=1, alpha=0.0, eta=0.0),
    ):
        result, _ = run_fit(rows, prompts, params)
        assert all(torch.equal(result.state_dict[k], start[k]) for k in start)
