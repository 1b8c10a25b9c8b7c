"""The zero-shot baseline is evaluated once per (base model, eval set, prompts, precision), not in every run:
a rerun with another training config evaluates only the new model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipcite.caches.baseline_cache import baseline_key
from clipcite.records import EvalReport, SetDigest
from clipcite.steps import evaluate, finetune, sample_splits
from tests.conftest import tiny_config

SPLITS = ("splits.shots=2", "splits.train_domains=[photo]")


@pytest.fixture(scope="module")
def two_models(table, tmp_path_factory):
    """Splits, and two models fine-tuned from the same base with different training configs."""
    out = tmp_path_factory.mktemp("baseline")
    first = tiny_config(*SPLITS, "train.method=zeroshot")
    sample_splits.run(str(table), str(out / "splits"), first)
    finetune.run(str(out / "splits"), str(out / "model-a"), first)
    second = tiny_config(*SPLITS, "train.method=ce", "train.epochs=1", "train.alpha=0.3", "train.lr=1e-4")
    finetune.run(str(out / "splits"), str(out / "model-b"), second)
    return out, first, second


@pytest.fixture
def spied(monkeypatch):
    """Counts the zero-shot model's loads, the calls that score a set (one pass over its images for every model
    that shares an eval view) and the models they scored."""
    calls: dict[str, int] = {"load_model": 0, "predict": 0, "models": 0}
    real_load, real_predict = evaluate.load_model, evaluate.predict_models

    def load(*args, **kwargs):
        calls["load_model"] += 1
        return real_load(*args, **kwargs)

    def predict(models, *args, **kwargs):
        calls["predict"] += 1
        calls["models"] += len(models)
        return real_predict(models, *args, **kwargs)

    monkeypatch.setattr(evaluate, "load_model", load)
    monkeypatch.setattr(evaluate, "predict_models", predict)
    return calls


def _run(out: Path, model: str, config, cache: Path, name: str) -> EvalReport:
    return evaluate.run(str(out / model), str(out / "splits"), str(out / name), config, baseline_cache=str(cache))


def test_a_rerun_with_another_training_config_does_not_run_the_zero_shot_model(two_models, tmp_path, spied):
    out, first, second = two_models
    cache = tmp_path / "baselines"
    before = _run(out, "model-a", first, cache, "eval-a")
    sets = len(before.sets)
    assert spied == {"load_model": 1, "predict": sets, "models": 2 * sets}  # zero-shot and fine-tuned, one pass a set
    assert before.zeroshot_cached == () and len(list(cache.glob("*.json"))) == sets

    spied.update(load_model=0, predict=0, models=0)
    after = _run(out, "model-b", second, cache, "eval-b")
    assert spied == {"load_model": 0, "predict": sets, "models": sets}  # the new model alone; the base model not loaded
    assert set(after.zeroshot_cached) == set(after.sets)
    for name, entry in after.sets.items():
        assert entry["zeroshot"] == before.sets[name]["zeroshot"]
    assert after.mean["zeroshot"] == before.mean["zeroshot"]
    assert after.alpha == 0.3 and after.method == "ce"  # the other training config's model


def test_what_changes_the_predictions_misses_the_cache(two_models, tmp_path, spied):
    out, first, _ = two_models
    cache = tmp_path / "baselines"
    _run(out, "model-a", first, cache, "eval-a")
    spied.update(load_model=0, predict=0, models=0)
    other_prompts = tiny_config(*SPLITS, "train.method=zeroshot", "model.template=itap {}")
    body = _run(out, "model-a", other_prompts, cache, "eval-t")
    assert body.zeroshot_cached == () and spied["load_model"] == 1


def test_a_damaged_entry_is_evaluated_again(two_models, tmp_path, spied):
    out, first, _ = two_models
    cache = tmp_path / "baselines"
    before = _run(out, "model-a", first, cache, "eval-a")
    damaged = sorted(cache.glob("*.json"))[0]
    damaged.write_text('{"key": "tru')
    spied.update(load_model=0, predict=0, models=0)
    after = _run(out, "model-a", first, cache, "eval-again")
    assert spied["load_model"] == 1 and len(after.zeroshot_cached) == len(after.sets) - 1
    assert after.sets == before.sets
    assert json.loads(damaged.read_text())["metrics"]  # rewritten whole


def test_the_key_covers_every_input_of_the_predictions():
    args = dict(
        base_identity="toyclip:abc",
        sources_digest="d1",
        set_name="photo-base",
        set_record=SetDigest(rows=10, ids_sha256="i1"),
        prompts=["a photo of a x.", "a photo of a y."],
        precision="fp32",
    )
    key = baseline_key(**args)
    assert key == baseline_key(**args)
    changes = {
        "base_identity": "toyclip:abd",
        "sources_digest": "d2",
        "set_name": "photo-new",
        "set_record": SetDigest(rows=10, ids_sha256="i2"),
        "prompts": ["a photo of a y.", "a photo of a x."],  # another label order
        "precision": "bf16",
    }
    for field, value in changes.items():
        assert baseline_key(**{**args, field: value}) != key, field
    with pytest.raises(ValueError, match="photo-base"):
        baseline_key(**{**args, "sources_digest": ""})
