"""Evaluation: batched open-vocabulary inference on image tables, metrics per eval set and domain, reports.

Prompts are encoded by the model under evaluation (method.md "Weight-space ensemble": the head W is discarded),
except those a saved class head was trained for (a linear probe's, :func:`clipcite.model.clip.class_features`); the
prediction for an image is the argmax of cosine similarity over the eval set's classes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from clipcite.config import Config
from clipcite.data.crops import model_input, view_key
from clipcite.data.loading import EvalDataset, loader_options
from clipcite.evaluation.metrics import balanced_accuracy, confusion_matrix, per_class_accuracy, top1
from clipcite.model.clip import LoadedModel, class_features
from clipcite.model.nonfinite import require_finite, row_ids
from clipcite.model.precision import autocast as precision_autocast
from clipcite.training import distributed

log = logging.getLogger(__name__)
Scorer = Callable[[LoadedModel], float]


def predict(
    loaded: LoadedModel,
    rows: list[dict],
    prompts: list[str],
    *,
    batch_size: int = 256,
    device: str = "cpu",
    num_workers: int = 0,
    precision: str = "auto",
    source: str = "",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted labels [N] and true labels [N] for ``rows`` among ``prompts`` (one per class, label order): the
    one-model case of :func:`predict_models`."""
    options = {"batch_size": batch_size, "device": device, "num_workers": num_workers, "precision": precision}
    preds, target = predict_models({"": loaded}, rows, prompts, **options, source=source, progress=progress)
    return preds[""], target


def validation_scores(
    model: LoadedModel, rows: Sequence[dict], prompts: list[str], config: Config, device: str, source: str = ""
) -> dict[str, float]:
    """Top-1 and balanced accuracy (points) of ``model`` on ``rows``, from one pass with the eval settings of
    ``config``; 0 for no rows (the caller says whether no validation images is an error)."""
    if not len(rows):
        return {"top1": 0.0, "balanced_accuracy": 0.0}
    settings = {"batch_size": config.eval.batch_size, "num_workers": config.eval.num_workers}
    preds, target = predict(
        model, rows, prompts, **settings, device=device, precision=config.train.precision, source=source
    )
    confusion = confusion_matrix(preds, target, len(prompts))
    return {"top1": float(top1(preds, target)), "balanced_accuracy": balanced_accuracy(confusion)}


def scorer(rows: Sequence[dict], prompts: list[str], config: Config, device: str, source: str = "") -> Scorer:
    """Validation top-1 (points) of a model: how train.alpha_grid scores an alpha."""
    return lambda model: validation_scores(model, rows, prompts, config, device, source)["top1"]


@torch.no_grad()
def predict_models(
    models: dict[str, LoadedModel],
    rows: list[dict],
    prompts: list[str],
    *,
    batch_size: int = 256,
    device: str = "cpu",
    num_workers: int = 0,
    precision: str = "auto",
    source: str = "",
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Predicted labels [N] per model name and true labels [N]: each image is decoded and transformed once for
    every model that sees the same eval view.

    The rule: models whose preprocessing configs have equal :func:`clipcite.data.crops.view_key` (size, mean/std,
    interpolation, resize mode, ...) share one pass over the images, each batch fed to each of them; a model with
    another view gets a pass of its own (a shared batch would feed it pixels it was not made for). A model's
    predictions are those it gets alone (the same batches, the same forward). Under several ranks each predicts its
    share of the batches and every rank returns all N. ``progress=False`` draws no bar: for callers that draw one
    bar of their own over many calls (``python -m clipcite.toyworld.zeroshot``)."""
    if not models:
        raise ValueError(f"{source}no model to evaluate")
    groups: dict[tuple, dict[str, LoadedModel]] = {}
    for name, loaded in models.items():
        groups.setdefault(view_key(loaded.preprocess_cfg), {})[name] = loaded
    if len(groups) > 1:
        log.info(
            "%s%d passes over the images, one per eval view: %s",
            source,
            len(groups),
            [list(g) for g in groups.values()],
        )
    preds = {name: torch.zeros(len(rows), dtype=torch.long) for name in models}
    targets = torch.zeros(len(rows), dtype=torch.long)
    options = {"batch_size": batch_size, "device": device, "num_workers": num_workers, "precision": precision}
    for group in groups.values():
        _one_pass(group, rows, prompts, preds, targets, **options, source=source, progress=progress)
    return {name: distributed.combine(p) for name, p in preds.items()}, distributed.combine(targets)


def _one_pass(
    models: dict[str, LoadedModel],
    rows: list[dict],
    prompts: list[str],
    preds: dict[str, torch.Tensor],
    targets: torch.Tensor,
    *,
    batch_size: int,
    device: str,
    num_workers: int,
    precision: str,
    source: str,
    progress: bool,
) -> None:
    """One pass over this rank's batches of ``rows`` for models that share an eval view; fills ``preds`` (per model)
    and ``targets`` at the batches' indices."""
    nets, texts, of = {}, {}, {}
    for name, loaded in models.items():
        nets[name] = loaded.model.to(device).eval()
        of[name] = f" of the {name} model" if name else ""
        texts[name] = class_features(loaded, prompts, batch_size, device)
        require_finite(texts[name], f"{source}text features of the class prompts{of[name]}", list(prompts))
    cfg = next(iter(models.values())).preprocess_cfg  # the group's one view
    dataset = EvalDataset(rows, cfg, source)
    autocast = precision_autocast(device, precision)
    batches = distributed.shard_batches(len(rows), batch_size)
    # one pass per set and view: workers need not persist; pinned batches copy to the GPU asynchronously
    loader = DataLoader(dataset, batch_sampler=batches, **loader_options(num_workers, 2, device, persistent=False))
    desc = " ".join(["evaluating", source or "set", *[name for name in models if name]])
    for index, pixels, labels in tqdm(loader, desc=desc, leave=False, disable=not progress):
        images = model_input(pixels, cfg, device)
        ids = row_ids(rows, index)
        for name, model in nets.items():
            with autocast:
                features = model.encode_image(images, normalize=True).float()
            logits = features @ texts[name].T
            require_finite(logits, f"{source}evaluation logits{of[name]}", ids)
            preds[name][index] = logits.argmax(dim=1).cpu()
        targets[index] = labels


def set_metrics(pred: torch.Tensor, target: torch.Tensor, classnames: list[str]) -> dict:
    """Top-1, balanced accuracy, per-class accuracy (recall) and images, and the confusion matrix of one eval
    set."""
    confusion = confusion_matrix(pred, target, len(classnames))
    return {
        "top1": top1(pred, target),
        "balanced_accuracy": balanced_accuracy(confusion),
        "n": len(target),
        "per_class": dict(zip(classnames, per_class_accuracy(confusion), strict=True)),
        "support": dict(zip(classnames, (int(n) for n in confusion.sum(axis=1)), strict=True)),
        "confusion": confusion.tolist(),
    }
