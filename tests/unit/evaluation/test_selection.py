"""The selection rule (clipcite.evaluation.selection): the best validation score, ties to the cheaper method."""

import dataclasses
import inspect
import itertools

import pytest

from clipcite.evaluation.selection import TIE_POINTS, Candidate, pick, rule, table


def _c(method: str, top1: float, params: int) -> Candidate:
    return Candidate(method, top1, val_images=48, trainable_parameters=params, seconds=1.0, artefact_bytes=4 * params)


CITE, LORA, PROBE = _c("cite", 80.0, 150_000_000), _c("lora", 79.95, 180_000), _c("linear_probe", 76.0, 12_000)


def test_the_best_validation_score_wins():
    assert pick([CITE, _c("lora", 78.0, 180_000), PROBE]).method == "cite"
    assert pick([PROBE]).method == "linear_probe"


def test_a_tie_within_the_tolerance_goes_to_fewer_trainable_parameters():
    assert pick([CITE, LORA, PROBE]).method == "lora"  # 0.05 points behind, 800x fewer parameters
    assert pick([CITE, LORA], tie_points=0.0).method == "cite"
    assert pick([CITE, _c("lora", 80.0 - TIE_POINTS - 0.01, 180_000)]).method == "cite"  # just outside: no tie
    assert pick([_c("ce", 80.0, 10), _c("flyp", 80.0, 10)]).method == "ce"  # a full tie: by name


def test_the_choice_does_not_depend_on_the_candidates_order():
    candidates = [CITE, LORA, PROBE, _c("ce", 80.05, 150_000_000)]
    assert {pick(list(order)).method for order in itertools.permutations(candidates)} == {"lora"}


def test_selection_sees_validation_and_costs_only():
    # the rule's whole input: a test metric cannot reach it (a field named test_* would fail here)
    fields = {f.name for f in dataclasses.fields(Candidate)}
    validation = {"val_top1", "val_balanced_accuracy", "val_images", "metric"}
    assert fields == {"method", *validation, "trainable_parameters", "seconds", "artefact_bytes"}
    assert list(inspect.signature(pick).parameters) == ["candidates", "tie_points"]


def test_no_validation_images_or_a_repeated_method_is_refused():
    with pytest.raises(ValueError, match="no validation images .*splits.val_shots"):
        pick([dataclasses.replace(CITE, val_images=0), LORA])
    with pytest.raises(ValueError, match="once"):
        pick([CITE, CITE])
    with pytest.raises(ValueError, match="no candidates"):
        pick([])


def test_the_table_marks_the_winner_and_the_rule_states_the_tolerance():
    rows = table([PROBE, LORA, CITE], pick([PROBE, LORA, CITE]))
    assert [(r.method, r.selected) for r in rows] == [("cite", False), ("lora", True), ("linear_probe", False)]
    assert "0.1 points" in rule() and "fewest trainable parameters" in rule()


def test_selection_metric_balanced_accuracy_compares_mean_per_class_recall():
    balanced = [dataclasses.replace(c, metric="balanced_accuracy") for c in (CITE, LORA, PROBE)]
    scores = {"cite": 60.0, "lora": 50.0, "linear_probe": 70.0}  # by top-1 lora wins (see above)
    balanced = [dataclasses.replace(c, val_balanced_accuracy=scores[c.method]) for c in balanced]
    assert pick(balanced).method == "linear_probe" and pick([CITE, LORA, PROBE]).method == "lora"
    assert "highest validation balanced accuracy" in rule(metric="balanced_accuracy")
    with pytest.raises(ValueError, match="different metrics"):
        pick([balanced[0], LORA])
