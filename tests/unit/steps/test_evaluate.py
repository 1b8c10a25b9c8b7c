"""The evaluation protocol's conventions: each eval set's own template, the base/new cut made once, the
OOD mean, per-dataset batch sizes, the cached teacher's precision."""

from __future__ import annotations

import pytest
import torch

from clipcite.config import GateConfig, load_config
from clipcite.data.crops import model_input
from clipcite.data.loading import CropDataset
from clipcite.data.table import ClassList, read_classes, read_table, write_table
from clipcite.evaluation.metrics import harmonic_mean, summarise
from clipcite.model.precision import autocast
from clipcite.steps import evaluate, finetune, sample_splits
from clipcite.tracking import promotion_gate
from clipcite.training.teacher_cache import build_cache
from tests.conftest import tiny_config
from tests.support.records import report


def _rewrite(table, out, keep_row, classes: ClassList | None = None, **changes) -> str:
    """A copy of ``table`` with the rows ``keep_row`` accepts, fields changed as given; with new ``classes``, each
    row's classname becomes its label's name there."""
    classes = classes or read_classes(str(table))
    rows = [
        {**r, **changes, "classname": classes.names[r["label"]]}
        for r in read_table(str(table)).to_pylist()
        if keep_row(r)
    ]
    write_table(rows, str(out), classes)
    return str(out)


@pytest.fixture(scope="module")
def two_tables(table, tmp_path_factory):
    """The demo table (template "a photo of a {}.") and a clipart table of another dataset, own template and four
    classes, whose test rows lack label 2 (its cut must come from its class list, not its rows)."""
    root = tmp_path_factory.mktemp("clipart")
    other = ClassList(("w", "x", "y", "z"), "a clipart of a {}.", "clipart")
    clipart = _rewrite(
        table,
        root / "clipart",
        lambda r: r["domain"] == "photo" and r["split"] == "test" and r["label"] in (0, 1, 3),
        other,
        domain="clipart",
    )
    return str(table), clipart


@pytest.fixture(scope="module")
def evaluated(two_tables, tmp_path_factory):
    main, clipart = two_tables
    out = tmp_path_factory.mktemp("eval-protocol")
    config = tiny_config("splits.shots=2", "splits.train_domains=[photo]", "train.method=zeroshot")
    sample_splits.run(main, str(out / "splits"), config, (clipart,))
    finetune.run(str(out / "splits"), str(out / "model"), config)
    return out, config


def test_each_eval_set_is_prompted_with_its_own_template(evaluated, monkeypatch):
    out, config = evaluated
    used: dict[str, list[str]] = {}
    real = evaluate.predict_models

    def spy(models, rows, prompts, **kwargs):
        used.setdefault(kwargs["source"], prompts)
        return real(models, rows, prompts, **kwargs)

    monkeypatch.setattr(evaluate, "predict_models", spy)
    body = evaluate.run(str(out / "model"), str(out / "splits"), str(out / "eval"), config)
    by_set = {source.rstrip(": ").rsplit("/", 1)[-1]: prompts for source, prompts in used.items()}
    assert by_set["clipart-base"] == ["a clipart of a w.", "a clipart of a x."]
    assert by_set["photo-base"][0].startswith("a photo of a ")
    assert body.sets["clipart-new"]["template"] == "a clipart of a {}."
    assert body.sets["sketch-new"]["template"] == "a photo of a {}."

    used.clear()
    forced = tiny_config("splits.train_domains=[photo]", "train.method=zeroshot", "model.template=itap {}")
    evaluate.run(str(out / "model"), str(out / "splits"), str(out / "eval2"), forced)
    assert all(p.startswith("itap ") for prompts in used.values() for p in prompts)  # model.template wins


def test_base_new_cut_is_made_once_on_the_training_classes(table, two_tables, tmp_path):
    """The test split lacks base class 1: the cut stays 0-2 | 3-5 (recomputing it on the eval rows would make
    class 3 a base class). Another dataset's table is cut on its own class list."""
    names = read_classes(str(table)).names
    no_test_1 = _rewrite(table, tmp_path / "t", lambda r: not (r["split"] == "test" and r["label"] == 1))
    manifest = sample_splits.run(no_test_1, str(tmp_path / "splits"), tiny_config("splits.shots=2"), (two_tables[1],))
    classes = {s.name: read_classes(str(tmp_path / "splits" / "eval" / s.name)).names for s in manifest.eval_sets}
    assert manifest.train_classes == tuple(names[:3])
    assert classes["photo-base"] == names[:3] and classes["photo-new"] == names[3:]
    assert classes["clipart-base"] == ("w", "x") and classes["clipart-new"] == ("y", "z")
    rows = read_table(str(tmp_path / "splits" / "eval" / "photo-base")).to_pylist()
    assert {r["classname"] for r in rows} == {names[0], names[2]} and {r["label"] for r in rows} == {0, 2}


def _sets(values: dict[str, tuple[float, float]]) -> dict:
    sets = {}
    for domain, (base, new) in values.items():
        for subset, top1 in (("base", base), ("new", new)):
            sets[f"{domain}-{subset}"] = {"domain": domain, "subset": subset, "finetuned": {"top1": top1}}
    return sets


def test_mean_leaves_out_the_trained_on_domains_and_takes_the_hm_of_means():
    sets = _sets({"photo": (90.0, 80.0), "sketch": (60.0, 40.0), "painting": (80.0, 70.0)})
    ood = summarise(sets, ["finetuned"], source_domains=["photo"])
    assert ood["mean_domains"] == ["sketch", "painting"] and ood["source_domains"] == ["photo"]
    assert ood["mean"]["finetuned"] == {"base": 70.0, "new": 55.0, "hm": pytest.approx(harmonic_mean(70.0, 55.0))}
    every = summarise(sets, ["finetuned"], source_domains=["photo"], mean_over="all")
    assert every["mean_domains"] == ["photo", "sketch", "painting"]
    assert every["mean"]["finetuned"]["hm"] == pytest.approx(harmonic_mean(230 / 3, 190 / 3))
    only_source = summarise(_sets({"photo": (90.0, 80.0)}), ["finetuned"], source_domains=["photo"])
    assert only_source["mean_domains"] == ["photo"]  # nothing else evaluated: the mean is the in-domain row


def test_evaluate_and_gate_say_which_domains_the_mean_covers(evaluated):
    out, config = evaluated
    body = evaluate.run(str(out / "model"), str(out / "splits"), str(out / "eval3"), config)
    assert body.train_domains == ("photo",)
    assert body.mean_domains == ("sketch", "clipart")
    assert body.mean["zeroshot"]["base"] == pytest.approx(
        (body.domains["clipart"]["zeroshot"]["base"] + body.domains["sketch"]["zeroshot"]["base"]) / 2
    )
    assert "mean of sketch, clipart" in (out / "eval3" / "report.md").read_text()
    assert "| photo (trained on) |" in (out / "eval3" / "report.md").read_text()
    reason = promotion_gate.decide(
        report(mean={"finetuned": {"hm": 50.0}, "champion": {"hm": 40.0}}, domains={}, mean_domains=["sketch"]),
        GateConfig(),
        champion_version=1,
    ).reason
    assert "mean over sketch" in reason


def test_per_dataset_batch_size_matches_any_spelling():
    config = load_config("paper_vitb16")
    assert [config.batch_size_for(n) for n in ("EuroSAT", "eurosat", "Eurosat", "euro_sat")] == [16] * 4
    assert config.batch_size_for("ImageNet") == 64 and config.batch_size_for("DTD") == 32


def test_cached_teacher_follows_train_precision(tiny, table):
    rows = read_table(str(table)).to_pylist()[:4]
    prompts = ["a photo of a a.", "a photo of a b."]
    kwargs = dict(seed=1, epochs=1, crop_scale=(0.9, 1.0), crop_ratio=(1.0, 1.0))
    fp32 = build_cache(tiny, rows, prompts, precision="auto", **kwargs)  # auto on CPU: fp32
    bf16 = build_cache(tiny, rows, prompts, precision="bf16", **kwargs)
    assert (fp32.meta.precision, bf16.meta.precision) == ("fp32", "bf16")
    assert not torch.equal(fp32.image, bf16.image)
    pixels = torch.stack([CropDataset(rows, tiny.preprocess_cfg, bf16.boxes)[i][1] for i in range(len(rows))])
    images = model_input(pixels, tiny.preprocess_cfg, "cpu")
    with torch.no_grad(), autocast("cpu", "bf16"):
        online = tiny.model.eval().encode_image(images, normalize=True).float()
    assert torch.allclose(bf16.image[0], online, atol=1e-6)  # what the online teacher computes under bf16


def test_a_champion_saved_in_an_older_format_is_skipped_and_the_gate_keeps_it(tiny, tmp_path, monkeypatch, caplog):
    """A registry whose champion predates the record formats: the run evaluates without it (and registers), the
    warning says how to move the alias by hand, instead of failing after training."""
    import json
    import logging
    import types

    from clipcite.model.clip import save_model
    from clipcite.tracking import registry
    from tests.support.records import meta

    folder = tmp_path / "champion"
    save_model(tiny, tiny.model.state_dict(), folder, meta(arch=tiny.name, base_identity=tiny.identity))
    body = json.loads((folder / "clipcite.json").read_text())
    del body["format"]  # as an older clipcite wrote it
    (folder / "clipcite.json").write_text(json.dumps(body))
    monkeypatch.setattr(registry, "champion", lambda client, name: types.SimpleNamespace(version="3"))
    monkeypatch.setattr(registry, "download_model_dir", lambda client, name, version, tmp: folder)
    with caplog.at_level(logging.WARNING, logger="clipcite.steps.evaluate"):
        assert evaluate._champion(None, "pets", tmp_path, "cpu") is None
    assert (
        "pets v3 (the champion) is not comparable" in caplog.text and "clipcite champion pets --promote" in caplog.text
    )
