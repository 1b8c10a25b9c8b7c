"""The steps' own checks: sample-splits refuses data that changed after the snapshot and two eval tables with the same
domain; evaluate refuses a zero-shot model that is not the base model and a domain with no eval set; register refuses
reports that overlap or compared against different champions."""

from __future__ import annotations

import pytest

from clipcite.steps import evaluate, finetune, register, sample_splits, snapshot
from tests.conftest import tiny_config
from tests.support.records import report

SPLITS = ("splits.shots=2",)


@pytest.fixture(scope="module")
def trained(table, tmp_path_factory):
    """Splits of the demo table and a model "fine-tuned" from the tiny random model (method zeroshot: no steps)."""
    out = tmp_path_factory.mktemp("checks")
    config = tiny_config(*SPLITS, "train.method=zeroshot")
    sample_splits.run(str(table), str(out / "splits"), config)
    finetune.run(str(out / "splits"), str(out / "model"), config)
    return out


def test_sample_splits_refuses_data_that_changed_after_the_snapshot(table, tmp_path):
    digest = snapshot.run(str(table), tracking_uri="off").digest
    manifest = sample_splits.run(str(table), str(tmp_path / "ok"), tiny_config(*SPLITS), expected_digest=digest)
    assert manifest.sources_digest == digest
    stale = "0" * 64  # what the snapshot saw before a shard was added or replaced
    with pytest.raises(ValueError, match=rf"the data under {table} changed after this run's snapshot .*rerun"):
        sample_splits.run(str(table), str(tmp_path / "splits"), tiny_config(*SPLITS), expected_digest=stale)
    assert not (tmp_path / "splits").exists()


def test_two_eval_tables_with_the_same_domain_are_refused(table, tmp_path):
    with pytest.raises(ValueError, match=rf"{table}: eval set 'photo-base' already comes from another table"):
        sample_splits.run(str(table), str(tmp_path / "splits"), tiny_config(*SPLITS), (str(table),))
    assert not (tmp_path / "splits").exists()


def test_evaluate_refuses_a_zero_shot_model_other_than_the_base_model(trained, tmp_path):
    other = tiny_config(*SPLITS, "model.init_seed=5")  # another random init: another model
    with pytest.raises(ValueError, match=r"zero-shot model 'random:clipcite-tiny:5' is not the one .* fine-tuned from"):
        evaluate.run(str(trained / "model"), str(trained / "splits"), str(tmp_path / "eval"), other)
    assert not (tmp_path / "eval").exists()


def test_evaluate_refuses_a_domain_with_no_eval_set(trained, tmp_path):
    with pytest.raises(ValueError, match=r"no eval set for domain\(s\) \['painting'\].*known domains: \['photo', 'sk"):
        evaluate.run(
            str(trained / "model"), str(trained / "splits"), str(tmp_path / "eval"), tiny_config(*SPLITS), ("painting",)
        )
    assert not (tmp_path / "eval").exists()


def _report(folder, sets: dict, champion_version=None) -> str:
    folder.mkdir()
    report(method="cite", alpha=0.5, seed=1, champion_version=champion_version, sets=sets).write(folder)
    return str(folder)


def _set(domain: str, subset: str, top1: float) -> dict:
    return {"domain": domain, "subset": subset, "finetuned": {"top1": top1}, "zeroshot": {"top1": top1 - 10}}


def test_register_merges_one_report_per_domain(tmp_path):
    photo = _report(
        tmp_path / "a", {"photo-base": _set("photo", "base", 80.0), "photo-new": _set("photo", "new", 60.0)}
    )
    sketch = _report(tmp_path / "b", {"sketch-base": _set("sketch", "base", 50.0)})
    body = register.merge_reports([photo, sketch])
    assert set(body.sets) == {"photo-base", "photo-new", "sketch-base"} and body.models == ("zeroshot", "finetuned")
    assert body.domains["photo"]["finetuned"]["hm"] == pytest.approx(2 * 80 * 60 / 140)


def test_register_refuses_an_eval_set_in_two_reports(tmp_path):
    first = _report(tmp_path / "a", {"photo-base": _set("photo", "base", 80.0)})
    again = _report(
        tmp_path / "b", {"photo-base": _set("photo", "base", 70.0), "sketch-base": _set("sketch", "base", 1)}
    )
    with pytest.raises(ValueError, match=r"eval set\(s\) \['photo-base'\] appear in more than one report"):
        register.merge_reports([first, again])


def test_register_refuses_reports_compared_against_different_champions(tmp_path):
    photo = _report(tmp_path / "a", {"photo-base": _set("photo", "base", 80.0)}, champion_version=3)
    sketch = _report(tmp_path / "b", {"sketch-base": _set("sketch", "base", 50.0)}, champion_version=4)
    with pytest.raises(ValueError, match=r"compared against different champion versions \['3', '4'\]"):
        register.merge_reports([photo, sketch])
    with pytest.raises(ValueError, match="no evaluation reports to register"):
        register.merge_reports([])
