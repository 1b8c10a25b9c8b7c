"""Evaluation: batched open-vocabulary inference on image tables, metrics per eval set and domain, reports.

Prompts are encoded by the model under evaluation (method.md "Weight-space ensemble": the head W is discarded);
the prediction for an image is the argmax of cosine similarity over the eval set's classes.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from clipcite.data.loading import EvalDataset
from clipcite.metrics import confusion_matrix, harmonic_mean, per_class_accuracy, top1
from clipcite.models import LoadedModel, encode_texts

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
    source: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted labels [N] and true labels [N] for ``rows`` among ``prompts`` (one per class, label order)."""
    model = loaded.model.to(device).eval()
    text = encode_texts(model, loaded.tokenizer, prompts, batch_size, device)
    preds, targets = [], []
    dataset = EvalDataset(rows, loaded.preprocess_cfg, source)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if str(device).startswith("cuda") else _null()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    for _, images, labels in tqdm(loader, desc=f"evaluating {source or 'set'}", leave=False):
        with autocast:
            features = model.encode_image(images.to(device), normalize=True).float()
        preds.append((features @ text.T).argmax(dim=1).cpu())
        targets.append(labels)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long), (
        torch.cat(targets) if targets else torch.empty(0, dtype=torch.long)
    )


def _null():
    return torch.autocast("cpu", enabled=False)


def set_metrics(pred: torch.Tensor, target: torch.Tensor, classnames: list[str]) -> dict:
    """Top-1, per-class accuracy and the confusion matrix of one eval set."""
    confusion = confusion_matrix(pred, target, len(classnames))
    return {
        "top1": top1(pred, target),
        "n": len(target),
        "per_class": dict(zip(classnames, per_class_accuracy(confusion), strict=True)),
        "confusion": confusion.tolist(),
    }


def summarise(sets: dict[str, dict], models: list[str]) -> dict:
    """Per domain: top-1 (all classes) or Base/New/HM (base-to-new sets); then the mean over domains.

    ``sets[name]`` holds ``domain``, ``subset`` (all|base|new) and one metrics dict per model name.
    """
    domains: dict[str, dict] = {}
    for info in sets.values():
        entry = domains.setdefault(info["domain"], {m: {} for m in models})
        key = {"all": "top1", "base": "base", "new": "new"}[info["subset"]]
        for m in models:
            entry[m][key] = info[m]["top1"]
    for entry in domains.values():
        for m in models:
            if "base" in entry[m] and "new" in entry[m]:
                entry[m]["hm"] = harmonic_mean(entry[m]["base"], entry[m]["new"])
    mean = {m: {} for m in models}
    for m in models:
        for key in ("top1", "base", "new", "hm"):
            values = [d[m][key] for d in domains.values() if key in d[m]]
            if values:
                mean[m][key] = sum(values) / len(values)
    return {"domains": domains, "mean": mean}
