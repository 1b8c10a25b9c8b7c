"""Metrics (pure): top-1, per-class accuracy, the harmonic mean and the aggregate over seeds and domains."""

import pytest
import torch

from clipcite.evaluation.metrics import aggregate, confusion_matrix, harmonic_mean, per_class_accuracy, summarise, top1


def test_confusion_per_class_and_top1():
    pred = torch.tensor([0, 1, 1, 2, 0])
    target = torch.tensor([0, 1, 2, 2, 2])
    cm = confusion_matrix(pred, target, 4)
    assert cm.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    acc = per_class_accuracy(cm)
    assert acc[:3] == [100.0, 100.0, pytest.approx(100 / 3)] and acc[3] != acc[3]  # NaN: no image
    assert top1(pred, target) == pytest.approx(60.0)


def test_harmonic_mean_and_aggregate_over_seeds():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    runs = [{"mean": {"ft": {"hm": 70.0}}}, {"mean": {"ft": {"hm": 72.0}}}, {"mean": {"ft": {"hm": 74.0}}}]
    assert aggregate(runs)["mean"]["ft"]["hm"] == {"mean": 72.0, "std": 2.0, "n": 3}


def test_aggregate_takes_the_hm_of_the_mean_base_and_new():
    """The paper's rule (81.06 = HM(85.48, 77.08)), not the mean of per-seed HMs."""
    runs = [{"ft": {"base": 90.0, "new": 50.0}}, {"ft": {"base": 70.0, "new": 80.0}}]
    for run in runs:
        run["ft"]["hm"] = harmonic_mean(run["ft"]["base"], run["ft"]["new"])
    hm = aggregate(runs)["ft"]["hm"]
    assert hm["mean"] == pytest.approx(harmonic_mean(80.0, 65.0))  # 71.72
    assert hm["mean_of_runs"] == pytest.approx((harmonic_mean(90, 50) + harmonic_mean(70, 80)) / 2)  # 69.46
    assert hm["n"] == 2 and hm["std"] == pytest.approx(abs(harmonic_mean(90, 50) - harmonic_mean(70, 80)) / 2**0.5)
    assert harmonic_mean(85.48, 77.08) == pytest.approx(81.06, abs=0.005)


def test_each_domain_gets_the_harmonic_mean_of_its_base_and_new_accuracy():
    sets = {
        "photo-base": {"domain": "photo", "subset": "base", "finetuned": {"top1": 80.0}},
        "photo-new": {"domain": "photo", "subset": "new", "finetuned": {"top1": 60.0}},
        "sketch": {"domain": "sketch", "subset": "all", "finetuned": {"top1": 40.0}},
    }
    domains = summarise(sets, ["finetuned"])["domains"]
    assert domains["photo"]["finetuned"] == {"base": 80.0, "new": 60.0, "hm": pytest.approx(2 * 80 * 60 / 140)}
    assert domains["sketch"]["finetuned"] == {"top1": 40.0}  # no base/new split: top-1 only
