"""Which candidate method a run registers: the rule, as pure functions (docs/cluster.md "Several methods").

A candidate is described by its validation score and what it costs, nothing else: the rule cannot see a test
label, because no test metric is among its inputs. The score is the gate's metric as far as validation can give it:
top-1 (points) on the validation split, which holds the trained classes only (base classes under base-to-new, so
the gate's harmonic mean with the new classes has no validation counterpart).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from clipcite.records import Candidate, SelectionRow

TIE_POINTS = 0.1  # decision: validation top-1 within 0.1 points of the best is a tie (a few-shot val set is small)
RULE = (
    "the highest validation {metric} (trained classes) wins; candidates within {tie} points of the best are a tie, "
    "won by the fewest trainable parameters (then the higher score, then the method's name)"
)
METRIC_NAMES = {"top1": "top-1", "balanced_accuracy": "balanced accuracy"}  # selection.metric's choices

CANDIDATE_PREFIX = "candidate-"  # evaluate's name for a candidate that lost the selection, scored for the record


def candidate_model(method: str) -> str:
    """The model name under which evaluate scores a losing candidate beside the selected one (``finetuned``)."""
    return f"{CANDIDATE_PREFIX}{method}"


def rule(tie_points: float = TIE_POINTS, metric: str = "top1") -> str:
    """The rule in words, as the model card and the tracking store state it."""
    return RULE.format(tie=tie_points, metric=METRIC_NAMES[metric])


def pick(candidates: Sequence[Candidate], tie_points: float = TIE_POINTS) -> Candidate:
    """The winner under :func:`rule`: among candidates scoring within ``tie_points`` of the best validation
    top-1, the one with the fewest trainable parameters; remaining ties by score, then by name (so the choice never
    depends on the order the candidates come in)."""
    if not candidates:
        raise ValueError("no candidates to select from")
    names = [c.method for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"each method may be a candidate once, got {names}")
    if any(c.val_images < 1 for c in candidates):
        empty = [c.method for c in candidates if c.val_images < 1]
        raise ValueError(
            f"no validation images to score {empty} on: give the data a val split or more train images than the "
            "shots (splits.val_shots), or run one method"
        )
    metrics = sorted({c.metric for c in candidates})
    if len(metrics) > 1:
        raise ValueError(f"the candidates were scored by different metrics {metrics}: validate them with one config")
    best = max(c.score for c in candidates)
    tied = [c for c in candidates if c.score >= best - tie_points - 1e-9]
    return min(tied, key=lambda c: (c.trainable_parameters, -c.score, c.method))


def table(candidates: Sequence[Candidate], winner: Candidate) -> tuple[SelectionRow, ...]:
    """One row per candidate (best validation score first), marking the winner: what the card and MLflow show."""
    rows = [SelectionRow(**asdict(c), selected=c.method == winner.method) for c in candidates]
    return tuple(sorted(rows, key=lambda r: (-r.score, r.method)))
