"""Train one candidate: the fit, the non-finite guard, the alpha grid, and what the run's records say about it.

The finetune step reads the inputs, calls :func:`train_candidate`, then writes and logs what it returns; nothing here
touches storage or MLflow.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clipcite.config import Config, to_dict
from clipcite.data.table import ClassList
from clipcite.model.clip import LoadedModel
from clipcite.model.nonfinite import NonFiniteError, nonfinite_weights
from clipcite.records import AlphaGrid, ModelMeta, TrainSummary
from clipcite.train_params import FitParams
from clipcite.training.alpha_grid import choose_alpha, grid_fit_params
from clipcite.training.loop import FitResult, LogFn, fit
from clipcite.training.teacher_cache import TeacherCache


@dataclass(frozen=True)
class Trained:
    """A trained candidate: the loop's result (weights at the chosen alpha), the grid's record when one ran, the
    per-step curves and what the method cost in seconds (training and the grid's validation passes)."""

    result: FitResult
    params: FitParams
    curves: tuple[dict, ...]
    seconds: float
    alpha_grid: AlphaGrid | None = None

    def summary(self, images: int, classes: int, device: str, teacher: str) -> TrainSummary:
        """train_summary.json without the sizes of the written folder (the step adds those)."""
        r = self.result
        return TrainSummary(
            method=self.params.method,
            skipped_steps=r.skipped_steps,
            steps=r.steps,
            epochs=r.epochs,
            alpha=r.alpha,
            trainable_parameters=r.trainable_parameters,
            logit_scale=r.logit_scale,
            batch_size=self.params.batch_size,
            images=images,
            classes=classes,
            images_per_second=r.images_per_second,
            seconds=self.seconds,
            device=device,
            teacher=teacher,
            alpha_grid=self.alpha_grid,
        )

    def meta(self, student: LoadedModel, classes: ClassList, template: str, config: Config) -> ModelMeta:
        """clipcite.json for the saved weights (the method's own entries included: LoRA's rank and adapter file,
        the probe's class head)."""
        r = self.result
        return ModelMeta(
            arch=student.name,
            base_identity=student.identity,
            method=self.params.method,
            classnames=tuple(classes.names),
            template=template,
            dataset=classes.dataset,
            alpha=r.alpha,
            seed=config.seed,
            steps=r.steps,
            logit_scale=r.logit_scale,
            config=to_dict(config),
            alpha_grid=self.alpha_grid,
            **r.meta,
        )


def train_candidate(
    student: LoadedModel,
    rows: list[dict],
    prompts: list[str],
    params: FitParams,
    *,
    seed: int,
    device: str,
    teacher: LoadedModel | None = None,
    cache: TeacherCache | None = None,
    checkpoint_dir: Path | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    log_fn: LogFn | None = None,
    source: str = "",
    score_on_validation: Callable[[LoadedModel], float] | None = None,
    val_images: int = 0,
) -> Trained:
    """Fit ``student`` with ``params``; with ``train.alpha_grid`` train once without the ensemble and choose alpha
    by ``score_on_validation`` (top-1 in points on ``val_images`` validation images). Weights holding NaN/inf are
    refused, never returned."""
    fit_params = grid_fit_params(params)
    if fit_params is not params and (score_on_validation is None or not val_images):
        raise ValueError(f"{source}train.alpha_grid needs validation images to choose alpha on")
    curves: list[dict] = []

    def record(metrics: dict, index: int) -> None:
        curves.append({"step": index, **metrics})
        if log_fn is not None:
            log_fn(metrics, index)

    started = time.perf_counter()
    result = fit(
        student,
        rows,
        prompts,
        fit_params,
        seed=seed,
        device=device,
        teacher=teacher,
        cache=cache,
        checkpoint_dir=checkpoint_dir,
        on_checkpoint=on_checkpoint,
        log_fn=record,
        source=source,
    )
    broken = nonfinite_weights(result.state_dict)
    if broken:  # the loop's guard should have stopped first; never save such weights
        raise NonFiniteError(f"{source}the trained weights hold NaN/inf in {broken[:5]}: no model written")
    grid = None
    if fit_params is not params and score_on_validation is not None:  # every rank scores its share of the images
        state, grid = choose_alpha(
            student, result.state_dict, result.zeroshot_state, params.alpha_grid, score_on_validation, val_images
        )
        result = dataclasses.replace(result, state_dict=state, alpha=grid.chosen)
    seconds = time.perf_counter() - started
    return Trained(result, params, tuple(curves), seconds, grid)
