"""``train.alpha_grid``: the weight-space ensemble's alpha chosen on the validation split after one training run.

Each alpha is only an average of two weight sets, so the grid costs one validation pass per alpha, not a training
run. The rule is a pure function (:func:`pick_alpha`); the score of an alpha comes from the caller, so training
never reaches up into the evaluation code.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence

import torch

from clipcite.model.clip import LoadedModel, average_weights
from clipcite.records import AlphaGrid
from clipcite.train_params import ENSEMBLE_METHODS, FitParams

log = logging.getLogger(__name__)

TIE_POINTS = 0.1  # decision: alphas whose validation top-1 is within 0.1 points of the best are a tie
ALPHA_RULE = (
    "the alpha with the highest validation top-1 (trained classes); alphas within {tie} points of the best are a "
    "tie, won by the lowest alpha (the most zero-shot weight: validation cannot credit the new classes and other "
    "domains the ensemble protects)"
)


def alpha_rule(tie_points: float = TIE_POINTS) -> str:
    """The alpha grid's rule in words (train_summary.json and the model card state it)."""
    return ALPHA_RULE.format(tie=tie_points)


def pick_alpha(scores: Mapping[float, float], tie_points: float = TIE_POINTS) -> float:
    """The weight-space ensemble's alpha under :func:`alpha_rule`, from ``{alpha: validation top-1}``."""
    if not scores:
        raise ValueError("no alphas to choose from: train.alpha_grid is empty")
    best = max(scores.values())
    return min(alpha for alpha, score in scores.items() if score >= best - tie_points - 1e-9)


def grid_fit_params(params: FitParams) -> FitParams:
    """What fit trains with: ``params``, or with ``train.alpha_grid`` set the same recipe without the ensemble
    (alpha 1, chosen afterwards on validation). A method without an ensemble ignores the grid, and says so."""
    if not params.alpha_grid:
        return params
    if params.method not in ENSEMBLE_METHODS:
        log.warning("train.alpha_grid ignored: %s saves no weight-space ensemble", params.method)
        return params
    lora = dataclasses.replace(params.lora, ensemble_alpha=1.0)
    # the grid leaves training as it is: a changed grid still resumes from the same checkpoint
    return dataclasses.replace(params, alpha=1.0, lora=lora, alpha_grid=())


def choose_alpha(
    student: LoadedModel,
    finetuned: dict[str, torch.Tensor],
    zeroshot: dict[str, torch.Tensor],
    grid: Sequence[float],
    score: Callable[[LoadedModel], float],
    val_images: int,
) -> tuple[dict[str, torch.Tensor], AlphaGrid]:
    """Score ``student`` at each alpha's average with ``score`` (validation top-1 in points, over ``val_images``
    images); leaves it at the chosen weights and returns (them, the grid's record)."""
    scores: dict[float, float] = {}
    for alpha in grid:
        student.model.load_state_dict(average_weights(finetuned, zeroshot, alpha))
        scores[alpha] = score(student)
        log.info("alpha %.2f: validation top-1 %.2f on %d images", alpha, scores[alpha], val_images)
    chosen = pick_alpha(scores)
    state = average_weights(finetuned, zeroshot, chosen)
    student.model.load_state_dict(state)
    record = AlphaGrid(tuple(scores), tuple(scores.values()), val_images, chosen, alpha_rule())
    return state, record
