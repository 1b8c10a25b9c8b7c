"""The promotion gate: pure decisions from metrics."""

import pytest

from clipcite.config import GateConfig
from clipcite.records import EvalReport
from clipcite.tracking.promotion_gate import decide, decide_promotion
from tests.support.records import report


def body(candidate: dict, champion: dict | None = None, champion_version: int | None = None) -> EvalReport:
    """Per-domain HM for the fine-tuned model (and the champion); the mean over domains as summarise computes it."""
    models = {"finetuned": candidate, **({"champion": champion} if champion else {})}
    domains = {d: {m: {"hm": v[d], "base": v[d], "new": v[d]} for m, v in models.items()} for d in candidate}
    mean = {m: {"hm": sum(v.values()) / len(v)} for m, v in models.items()}
    return report(domains=domains, mean=mean, champion_version=champion_version)


def test_no_champion_promotes():
    decision = decide(body({"photo": 60.0}), GateConfig(), champion_version=None)
    assert decision.promote and decision.reason == "no champion yet" and decision.metric == "hm"


def test_better_mean_promotes_and_worse_or_equal_does_not():
    better = decide(
        body({"photo": 62.0, "sketch": 40.0}, {"photo": 60.0, "sketch": 40.0}), GateConfig(), champion_version=1
    )
    assert better.promote and better.candidate == 51.0 and better.champion == 50.0
    tie = decide(body({"photo": 60.0}, {"photo": 60.0}), GateConfig(), champion_version=1)
    assert not tie.promote and "needs > 0" in tie.reason
    worse = decide(body({"photo": 59.0}, {"photo": 60.0}), GateConfig(), champion_version=1)
    assert not worse.promote and "gain -1.00" in worse.reason


def test_gain_below_min_improvement_does_not_promote():
    metrics = body({"photo": 60.4}, {"photo": 60.0})
    assert not decide(metrics, GateConfig(min_improvement=0.5), champion_version=1).promote
    assert decide(metrics, GateConfig(min_improvement=0.3), champion_version=1).promote


def test_a_kept_domain_dropping_too_much_blocks_promotion():
    metrics = body({"photo": 70.0, "sketch": 38.0}, {"photo": 60.0, "sketch": 40.0})  # mean +4, sketch -2
    blocked = decide(metrics, GateConfig(max_domain_drop=1.0), champion_version=3)
    assert not blocked.promote and "sketch -2.00" in blocked.reason and blocked.drops == {"sketch": 2.0}
    assert decide(metrics, GateConfig(max_domain_drop=2.5), champion_version=3).promote
    assert decide(metrics, GateConfig(kept_domains=("photo",)), champion_version=3).promote
    with pytest.raises(ValueError, match="'painting' is not an eval domain"):
        decide(metrics, GateConfig(kept_domains=("painting",)), champion_version=3)


def test_primary_metric_on_one_domain_and_fewshot_top1():
    metrics = body({"photo": 70.0, "sketch": 30.0}, {"photo": 60.0, "sketch": 45.0})  # mean worse, photo better
    assert decide(metrics, GateConfig(domain="photo", kept_domains=("photo",)), champion_version=1).promote
    fewshot = report(
        domains={"photo": {"finetuned": {"top1": 80.0}, "champion": {"top1": 70.0}}},
        mean={"finetuned": {"top1": 80.0}, "champion": {"top1": 70.0}},
    )
    decision = decide(fewshot, GateConfig(), champion_version=1)
    assert decision.promote and decision.metric == "top1"
    with pytest.raises(ValueError, match="gate.metric='hm'"):
        decide(fewshot, GateConfig(metric="hm"), champion_version=1)


def test_champion_not_evaluated_never_promotes():
    decision = decide(body({"photo": 90.0}), GateConfig(), champion_version=2)
    assert not decision.promote and "v2 was not evaluated" in decision.reason


def test_registry_state_rules_come_before_the_metrics():
    better = body({"photo": 62.0}, {"photo": 60.0}, champion_version=1)
    assert decide_promotion(better, GateConfig(), version=2, holder=1).promote  # the metrics decide
    rerun = decide_promotion(better, GateConfig(), version=2, holder=2)
    assert rerun.promote and rerun.reason == "v2 already holds champion"
    moved = decide_promotion(better, GateConfig(), version=3, holder=2)  # compared with v1, v2 took it meanwhile
    assert not moved.promote and "champion is v2 but this run was compared with v1" in moved.reason
    first = body({"photo": 50.0})
    assert decide_promotion(first, GateConfig(), version=1, holder=None).reason == "no champion yet"
    late = decide_promotion(first, GateConfig(), version=2, holder=1)  # v1 became champion while this run ran
    assert not late.promote and "compared with no champion" in late.reason


def test_gate_metric_balanced_accuracy_promotes_by_mean_per_class_recall():
    """On classes of unequal size a model can gain top-1 by answering the large class more often and lose the
    small ones: with gate.metric=balanced_accuracy the gate reads the recall over classes instead."""
    finetuned = {"top1": 72.0, "balanced_accuracy": 55.0}
    champion = {"top1": 70.0, "balanced_accuracy": 60.0}
    metrics = report(
        domains={"line": {"finetuned": finetuned, "champion": champion}},
        mean={"finetuned": finetuned, "champion": champion},
    )
    assert decide(metrics, GateConfig(), champion_version=1).promote  # top-1 by default: +2 points
    by_recall = decide(metrics, GateConfig(metric="balanced_accuracy"), champion_version=1)
    assert not by_recall.promote and by_recall.metric == "balanced_accuracy"
    assert (by_recall.candidate, by_recall.champion) == (55.0, 60.0)
