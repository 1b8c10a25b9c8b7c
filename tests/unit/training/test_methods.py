"""The added methods (clipcite/methods): CLIP-LoRA and CLAP's linear probe, their properties and their end-to-end
run through finetune + evaluate on the tiny model (CPU, seconds)."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from clipcite.cli import main
from clipcite.config import ConfigError, load_config
from clipcite.model.clip import class_features, load_model, load_saved
from clipcite.train_params import METHODS, FitParams, LoraParams, ProbeParams
from clipcite.training import methods
from clipcite.training.loop import fit
from clipcite.training.methods import linear_probe, lora
from clipcite.training.teacher_cache import build_cache
from tests.conftest import TINY, Interrupt, stop_in_epoch

LORA = FitParams(method="lora", batch_size=8, lora=LoraParams(iters_per_shot=2))  # 2 x K=4: 8 steps, 4 epochs
PROBE = FitParams(method="linear_probe", epochs=2, batch_size=8, probe=ProbeParams(lr=1e-2))


def test_every_method_has_a_module_and_the_config_lists_them():
    assert {"lora", "linear_probe"} <= set(METHODS)
    for method in METHODS:
        assert callable(methods.module(method).trainer)


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.lora.rank=0", "lora.rank=0"),
        ("train.lora.dropout=1.0", "lora.dropout=1.0"),
        ("train.lora.ensemble_alpha=2", "lora.ensemble_alpha=2.0"),
        ("train.probe.penalty=-1", "probe.penalty=-1.0"),
    ],
)
def test_config_names_a_bad_method_setting(override, named):
    with pytest.raises(ConfigError, match=f"invalid training setting\\(s\\): {named}"):
        load_config(overrides=[*TINY, override])
    with pytest.raises(ConfigError, match="did you mean 'train.lora.rank'"):
        load_config(overrides=[*TINY, "train.lora.rnak=4"])
    assert load_config(overrides=[*TINY, "train.lora.rank=4"]).train.lora.rank == 4


def _logits(model, images, tokens):
    with torch.no_grad():
        return model.encode_image(images, normalize=True) @ model.encode_text(tokens, normalize=True).T


def test_lora_starts_as_the_base_model_and_its_merge_is_exact(tiny):
    model = tiny.model.eval()
    images, tokens = torch.randn(3, 3, 32, 32), tiny.tokenizer(["a photo of a cat.", "a dog", "x"])
    before = _logits(model, images, tokens)
    adapters = lora.attach(model, rank=2, alpha=1.0, dropout=0.25)
    assert len(adapters) == 4  # 2 blocks per encoder, both encoders
    assert not any(adapter.training for adapter in adapters.values())  # the model's eval mode: no dropout
    assert torch.allclose(_logits(model, images, tokens), before, atol=1e-6)  # B = 0: no change yet
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.lora_b.normal_(0, 0.5)  # a trained adapter
    adapted = _logits(model, images, tokens)
    assert (adapted - before).abs().max() > 1e-2
    plain = load_model("clipcite-tiny", "", init_seed=5).model.eval()
    plain.load_state_dict(lora.merged_state(model, adapters))
    assert torch.allclose(_logits(plain, images, tokens), adapted, atol=1e-5)


def test_lora_trains_only_the_adapter_and_saves_it_small_and_reloadable(train_rows):
    rows, prompts = train_rows
    student = load_model("clipcite-tiny", "")
    base = {k: v.clone() for k, v in student.model.state_dict().items()}
    result = fit(student, rows, prompts, LORA, seed=1)
    assert result.steps == 2 * 4 and result.epochs == 4  # 500 x K iterations, here 2 x 4
    after = student.model.state_dict()  # the student is a plain open_clip model again, its weights untouched
    assert after.keys() == base.keys() and all(torch.equal(after[k], base[k]) for k in base)
    changed = {k for k in base if not torch.equal(result.state_dict[k], base[k])}
    assert changed == {p + ".in_proj_weight" for p in lora.attention_paths(student.model)}
    assert result.trainable_parameters == 4 * (3 * 2 * 64 * 2)  # 4 blocks x q, k, v x (A [2, 64] + B [64, 2])
    adapter = result.files[lora.ADAPTER_FILE]
    assert len(adapter) < 20_000 < 0.1 * sum(v.numel() * 4 for v in base.values())
    merged = load_model("clipcite-tiny", "").model.eval()
    merged.load_state_dict(result.state_dict)
    reloaded = load_model("clipcite-tiny", "").model.eval()
    lora.load_adapter(reloaded, adapter)
    images, tokens = torch.randn(2, 3, 32, 32), student.tokenizer(prompts)
    assert torch.allclose(_logits(reloaded.eval(), images, tokens), _logits(merged, images, tokens), atol=1e-5)


def test_lora_weight_space_ensemble_is_off_by_default_and_switchable(train_rows):
    rows, prompts = train_rows
    zeroshot = load_model("clipcite-tiny", "").model.state_dict()
    full = fit(load_model("clipcite-tiny", ""), rows, prompts, LORA, seed=1)
    half_params = dataclasses.replace(LORA, lora=dataclasses.replace(LORA.lora, ensemble_alpha=0.5))
    half = fit(load_model("clipcite-tiny", ""), rows, prompts, half_params, seed=1)
    assert full.alpha == 1.0 and half.alpha == 0.5
    key = "visual.transformer.resblocks.0.attn.in_proj_weight"
    half_delta, full_delta = half.state_dict[key] - zeroshot[key], full.state_dict[key] - zeroshot[key]
    assert full_delta.abs().max() > 1e-5 and torch.allclose(half_delta, 0.5 * full_delta, atol=1e-7)
    # the adapter file is the update as trained; applied at the ensemble's alpha it gives the saved model
    reloaded = load_model("clipcite-tiny", "").model.eval()
    adapters = lora.load_adapter(reloaded, half.files[lora.ADAPTER_FILE], ensemble_alpha=0.5)
    rebuilt = lora.merged_state(reloaded, adapters)
    assert all(torch.allclose(rebuilt[k], half.state_dict[k], atol=1e-6) for k in half.state_dict)


def test_resumed_lora_run_ends_with_the_same_weights(train_rows, tmp_path):
    rows, prompts = train_rows
    whole = fit(load_model("clipcite-tiny", ""), rows, prompts, LORA, seed=1)
    with pytest.raises(Interrupt):
        fit(
            load_model("clipcite-tiny", ""),
            rows,
            prompts,
            LORA,
            seed=1,
            checkpoint_dir=tmp_path,
            log_fn=stop_in_epoch(3),
        )
    assert set(torch.load(tmp_path / "last.pt", weights_only=True)["model"]) == {
        f"{x}.{i}" for x in "ab" for i in range(4)
    }  # the checkpoint holds the adapter alone
    resumed = fit(load_model("clipcite-tiny", ""), rows, prompts, LORA, seed=1, checkpoint_dir=tmp_path)
    assert all(torch.equal(whole.state_dict[k], resumed.state_dict[k]) for k in whole.state_dict)


def test_lora_refuses_an_architecture_it_cannot_adapt(tiny):
    tiny.model.transformer.resblocks[1].attn = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"transformer.resblocks.1.attn is Identity, not an nn.MultiheadAttention"):
        lora.attach(tiny.model, 2, 1.0, 0.0)


def test_clap_multipliers_and_penalty_by_hand():
    text = torch.eye(2)
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    lambdas = linear_probe.multipliers(features, torch.tensor([0, 1, 1]), text, scale=1.0)
    p = torch.tensor([1.0, 0.0]).exp() / torch.tensor([1.0, 0.0]).exp().sum()  # softmax of [1, 0]
    assert torch.allclose(lambdas, torch.stack([p[0], (p[1] + p[0]) / 2]))
    w = text + torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    assert float(linear_probe.anchor_penalty(w, text, torch.tensor([0.5, 1.0]))) == pytest.approx(0.25)


def _probe_run(rows, prompts, cache, penalty):
    params = dataclasses.replace(PROBE, epochs=4, probe=dataclasses.replace(PROBE.probe, penalty=penalty))
    result = fit(load_model("clipcite-tiny", ""), rows, prompts, params, seed=1, cache=cache)
    head = load_file_bytes(result.files[linear_probe.HEAD_FILE])
    return result, head


def load_file_bytes(data: bytes) -> torch.Tensor:
    from safetensors.torch import load

    return load(data)["weights"]


def test_probe_trains_on_cached_features_only_and_its_penalty_pulls_to_zeroshot(train_rows):
    rows, prompts = train_rows
    cache = build_cache(load_model("clipcite-tiny", ""), rows, prompts, seed=1, epochs=4, crop_scale=(0.08, 1.0),
                        crop_ratio=(3 / 4, 4 / 3))  # fmt: skip
    unreadable = [{**r, "image": b"not an image", "path": ""} for r in rows]  # decoding any would fail
    free, free_head = _probe_run(unreadable, prompts, cache, penalty=0.0)
    held, held_head = _probe_run(unreadable, prompts, cache, penalty=50.0)
    zeroshot = cache.text
    assert free.trainable_parameters == 3 * 64 and free.steps == 4 * 2
    base = load_model("clipcite-tiny", "").model.state_dict()
    assert all(torch.equal(held.state_dict[k], base[k]) for k in base)  # the encoders do not change
    free_gap, held_gap = (free_head - zeroshot).norm(dim=1), (held_head - zeroshot).norm(dim=1)
    assert free_gap.min() > 0.05  # without the anchor the probe moves away from the text features
    assert (held_gap < free_gap).all()  # the penalty pulls every class back toward its zero-shot weight
    assert held_gap.mean() < 0.6 * free_gap.mean()


def test_class_head_replaces_only_the_prompts_it_was_trained_for(tiny):
    prompts = ["a photo of a cat.", "a photo of a dog."]
    text = class_features(tiny, [*prompts, "a photo of a fox."])
    tiny.head = {prompts[1]: torch.nn.functional.normalize(torch.ones(64), dim=0)}
    headed = class_features(tiny, [*prompts, "a photo of a fox."])
    assert torch.equal(headed[0], text[0]) and torch.equal(headed[2], text[2])
    assert torch.allclose(headed[1], tiny.head[prompts[1]])


@pytest.fixture(scope="module")
def splits(imagefolder, tmp_path_factory):
    out = tmp_path_factory.mktemp("methods")
    argv = ["--root", str(imagefolder), "--layout", "split/domain/class", "--dataset", "demo"]
    assert main(["ingest", "imagefolder", *argv, "--out", str(out / "table")]) == 0
    config = ["--config", "demo_cpu", "--set", "train.epochs=2", "--set", "splits.shots=4"]
    assert main(["sample-splits", *config, "--table", str(out / "table"), "--out", str(out / "splits")]) == 0
    assert main(["cache-teacher", *config, "--splits", str(out / "splits"), "--out", str(out / "teacher")]) == 0
    return out, config


@pytest.mark.parametrize("method, extra", [("lora", "train.lora.iters_per_shot=1"), ("linear_probe", "")])
def test_method_runs_through_finetune_and_evaluate(splits, method, extra):
    out, config = splits
    config = [*config, "--set", f"train.method={method}", *(["--set", extra] if extra else [])]
    model, report = out / f"model-{method}", out / f"eval-{method}"
    argv = ["--splits", str(out / "splits"), "--cache", str(out / "teacher"), "--out", str(model)]
    assert main(["finetune", *config, *argv]) == 0
    assert (
        main(["evaluate", *config, "--model", str(model), "--splits", str(out / "splits"), "--out", str(report)]) == 0
    )
    summary = json.loads((model / "train_summary.json").read_text())
    own_file = {"lora": lora.ADAPTER_FILE, "linear_probe": linear_probe.HEAD_FILE}[method]
    assert summary["method"] == method and summary["artefact_bytes"] == (model / own_file).stat().st_size
    assert summary["trainable_parameters"] > 0 and summary["seconds"] > 0 and summary["model_bytes"] > 0
    meta = json.loads((model / "clipcite.json").read_text())
    assert meta["method"] == method and meta["alpha"] == 1.0
    loaded, _ = load_saved(model)
    assert load_file(str(model / "open_clip_model.safetensors")).keys() == loaded.model.state_dict().keys()
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["method"] == method and {"photo", "sketch"} <= set(metrics["domains"])
    if method == "linear_probe":  # base-to-new: the new classes keep their zero-shot weights
        assert len(loaded.head) == 3 and "keeps its zero-shot text embedding" in meta["note"]
        for domain in ("photo", "sketch"):
            new = metrics["sets"][f"{domain}-new"]
            assert new["finetuned"]["top1"] == new["zeroshot"]["top1"]
            assert new["finetuned"]["per_class"] == new["zeroshot"]["per_class"]
