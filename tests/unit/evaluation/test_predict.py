"""Evaluate decodes each eval image once for every model that shares an eval view: the one-pass
predictions equal each model's own, the images are decoded once per view, and evaluate's entries are unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clipcite.data import loading
from clipcite.data.table import read_table
from clipcite.evaluation.predict import predict, predict_models, set_metrics
from clipcite.model.clip import load_model, load_saved
from clipcite.records import SplitsManifest
from clipcite.steps import evaluate, finetune, sample_splits
from clipcite.steps.artifact_io import class_prompts, read_split
from tests.conftest import tiny_config

TINY_ARCH = Path(__file__).resolve().parents[3] / "clipcite" / "model_configs" / "clipcite-tiny.json"


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The ids of the rows an EvalDataset decoded (in this process: loaders without workers)."""
    seen: list[str] = []
    real = loading.decode_image

    def counted(data, where):
        seen.append(where)
        return real(data, where)

    monkeypatch.setattr(loading, "decode_image", counted)
    return seen


@pytest.fixture(scope="module")
def tiny48(tmp_path_factory):
    """An architecture like clipcite-tiny with 48 px input: a champion whose eval view differs."""
    body = json.loads(TINY_ARCH.read_text())
    body["vision_cfg"]["image_size"] = 48
    path = tmp_path_factory.mktemp("arch") / "clipcite-tiny48.json"
    path.write_text(json.dumps(body))
    return str(path)


def _models(tiny48: str) -> dict:
    other_mean = load_model("clipcite-tiny", "", init_seed=3)
    other_mean.preprocess_cfg = {**other_mean.preprocess_cfg, "mean": (0.5, 0.5, 0.5)}  # same size, another view
    return {
        "zeroshot": load_model("clipcite-tiny", "", init_seed=0),
        "finetuned": load_model("clipcite-tiny", "", init_seed=1),
        "champion": load_model(tiny48, "", init_seed=2),
        "other_mean": other_mean,
    }


def test_one_pass_predicts_what_each_model_predicts_alone_decoding_once_per_view(table, tiny48, decodes):
    rows = read_table(str(table)).to_pylist()[:30]
    prompts = [f"a photo of class {i}." for i in range(max(int(r["label"]) for r in rows) + 1)]
    models = _models(tiny48)
    alone = {name: predict(m, rows, prompts, batch_size=7, source="set: ") for name, m in models.items()}
    assert len(decodes) == len(models) * len(rows)  # the per-model path: every image once per model

    decodes.clear()
    preds, target = predict_models(models, rows, prompts, batch_size=7, source="set: ")
    # three eval views (32 px CLIP mean, 48 px, 32 px other mean): three passes, not four
    assert len(decodes) == 3 * len(rows)
    assert sorted(decodes) == sorted(f"set: row id={r['id']!r}" for r in rows for _ in range(3))
    assert list(preds) == list(models)
    for name, (pred, truth) in alone.items():
        assert torch.equal(preds[name], pred), name
        assert torch.equal(target, truth)

    parallel, parallel_target = predict_models(models, rows, prompts, batch_size=7, num_workers=2)
    assert all(torch.equal(parallel[n], preds[n]) for n in models) and torch.equal(parallel_target, target)


def test_models_of_one_view_share_a_pass(table, decodes):
    rows = read_table(str(table)).to_pylist()[:12]
    models = {f"seed{s}": load_model("clipcite-tiny", "", init_seed=s) for s in range(3)}
    predict_models(models, rows, ["a photo of a x.", "a photo of a y."], batch_size=5)
    assert len(decodes) == len(rows)


def test_no_model_is_an_error():
    with pytest.raises(ValueError, match="set: no model to evaluate"):
        predict_models({}, [], ["a"], source="set: ")


def test_evaluate_scores_a_set_in_one_pass_per_view_with_unchanged_metrics(table, tiny48, tmp_path, decodes):
    """_Evaluation.score_set with the lazy zero-shot model, the fine-tuned model and a 48 px champion: two passes
    over each set's images, and every model's metrics those of its own predict."""
    config = tiny_config("splits.shots=2", "splits.train_domains=[photo]", "train.method=ce", "train.epochs=1")
    sample_splits.run(str(table), str(tmp_path / "splits"), config)
    finetune.run(str(tmp_path / "splits"), str(tmp_path / "model"), config)
    finetuned, meta = load_saved(tmp_path / "model")
    champion = load_model(tiny48, "", init_seed=2)
    manifest = SplitsManifest.read(tmp_path / "splits")
    models = {"zeroshot": None, "finetuned": finetuned, "champion": champion}
    scoring = evaluate._Evaluation(config, "cpu", manifest, meta, str(tmp_path / "model"), models, "")
    for spec_set in manifest.eval_sets:
        set_uri = str(tmp_path / "splits" / "eval" / spec_set.name)
        decodes.clear()
        entry, cached = scoring.score_set(spec_set, set_uri, set_uri)  # read and recorded at one local path
        rows, classes = read_split(set_uri)
        assert not cached and len(decodes) == 2 * len(rows)  # zero-shot and fine-tuned share a pass; champion its own
        _, prompts = class_prompts(classes, config)
        for name in ("zeroshot", "finetuned", "champion"):
            options = {"batch_size": config.eval.batch_size, "precision": config.train.precision}
            pred, target = predict(models[name], rows, prompts, **options)
            assert entry[name] == set_metrics(pred, target, list(classes.names)), (spec_set.name, name)
    assert models["zeroshot"] is not None  # loaded on first need
