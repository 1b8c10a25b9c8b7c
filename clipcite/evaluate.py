"""Evaluation: batched open-vocabulary inference on image tables, metrics per eval set and domain, reports.

Prompts are encoded by the model under evaluation (method.md "Weight-space ensemble": the head W is discarded);
the prediction for an image is the argmax of cosine similarity over the eval set's classes.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from clipcite import distributed
from clipcite.data.loading import EvalDataset
from clipcite.finite import require_finite
from clipcite.loaders import loader_options
from clipcite.metrics import confusion_matrix, per_class_accuracy, top1
from clipcite.models import LoadedModel, encode_texts
from clipcite.precision import autocast as precision_autocast

log = logging.getLogger(__name__)


@torch.no_grad()
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted labels [N] and true labels [N] for ``rows`` among ``prompts`` (one per class, label order).

    Under several ranks each predicts its share of the batches and every rank returns all N."""
    model = loaded.model.to(device).eval()
    text = encode_texts(model, loaded.tokenizer, prompts, batch_size, device)
    require_finite(text, f"{source}text features of the class prompts", list(prompts))
    preds, targets = torch.zeros(len(rows), dtype=torch.long), torch.zeros(len(rows), dtype=torch.long)
    dataset = EvalDataset(rows, loaded.preprocess_cfg, source)
    autocast = precision_autocast(device, precision)
    batches = distributed.shard_batches(len(rows), batch_size)
    # one pass per set: workers need not persist; pinned batches copy to the GPU asynchronously
    loader = DataLoader(dataset, batch_sampler=batches, **loader_options(num_workers, 2, device, persistent=False))
    for index, images, labels in tqdm(loader, desc=f"evaluating {source or 'set'}", leave=False):
        with autocast:
            features = model.encode_image(images.to(device, non_blocking=True), normalize=True).float()
        logits = features @ text.T
        require_finite(logits, f"{source}evaluation logits", [f"id={rows[int(i)]['id']}" for i in index])
        preds[index], targets[index] = logits.argmax(dim=1).cpu(), labels
    return distributed.combine(preds), distributed.combine(targets)


def set_metrics(pred: torch.Tensor, target: torch.Tensor, classnames: list[str]) -> dict:
    """Top-1, per-class accuracy and the confusion matrix of one eval set."""
    confusion = confusion_matrix(pred, target, len(classnames))
    return {
        "top1": top1(pred, target),
        "n": len(target),
        "per_class": dict(zip(classnames, per_class_accuracy(confusion), strict=True)),
        "confusion": confusion.tolist(),
    }
