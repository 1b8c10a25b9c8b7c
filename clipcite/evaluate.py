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
from clipcite.finite import require_finite
from clipcite.loaders import loader_options
from clipcite.metrics import confusion_matrix, harmonic_mean, per_class_accuracy, top1
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
    """Predicted labels [N] and true labels [N] for ``rows`` among ``prompts`` (one per class, label order)."""
    model = loaded.model.to(device).eval()
    text = encode_texts(model, loaded.tokenizer, prompts, batch_size, device)
    require_finite(text, f"{source}text features of the class prompts", list(prompts))
    preds, targets = [], []
    dataset = EvalDataset(rows, loaded.preprocess_cfg, source)
    autocast = precision_autocast(device, precision)
    # one pass per set: workers need not persist; pinned batches copy to the GPU asynchronously
    loader = DataLoader(dataset, batch_size=batch_size, **loader_options(num_workers, 2, device, persistent=False))
    for index, images, labels in tqdm(loader, desc=f"evaluating {source or 'set'}", leave=False):
        with autocast:
            features = model.encode_image(images.to(device, non_blocking=True), normalize=True).float()
        logits = features @ text.T
        require_finite(logits, f"{source}evaluation logits", [f"id={rows[int(i)]['id']}" for i in index])
        preds.append(logits.argmax(dim=1).cpu())
        targets.append(labels)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long), (
        torch.cat(targets) if targets else torch.empty(0, dtype=torch.long)
    )


def set_metrics(pred: torch.Tensor, target: torch.Tensor, classnames: list[str]) -> dict:
    """Top-1, per-class accuracy and the confusion matrix of one eval set."""
    confusion = confusion_matrix(pred, target, len(classnames))
    return {
        "top1": top1(pred, target),
        "n": len(target),
        "per_class": dict(zip(classnames, per_class_accuracy(confusion), strict=True)),
        "confusion": confusion.tolist(),
    }


MEAN_OVER = ("ood", "all")


def summarise(
    sets: dict[str, dict], models: list[str], source_domains: tuple[str, ...] | list[str] = (), mean_over: str = "ood"
) -> dict:
    """Per domain: top-1 (all classes) or Base/New/HM (base-to-new sets); then the mean over domains.

    ``sets[name]`` holds ``domain``, ``subset`` (all|base|new) and one metrics dict per model name. The mean
    averages top-1, Base and New over the domains not trained on (``source_domains``; method.md's "OOD average")
    when ``mean_over="ood"`` and there are any, else over every domain; its ``hm`` is HM(mean Base, mean New).
    ``mean_domains`` says which domains it covers, ``source_domains`` which evaluated domains were trained on.
    """
    if mean_over not in MEAN_OVER:
        raise ValueError(f"eval.mean_over must be one of {MEAN_OVER}, got {mean_over!r}")
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
    sources = [d for d in domains if d in set(source_domains)]
    targets = [d for d in domains if d not in set(source_domains)]
    averaged = targets if mean_over == "ood" and targets else list(domains)
    mean: dict[str, dict] = {m: {} for m in models}
    for m in models:
        for key in ("top1", "base", "new"):
            values = [domains[d][m][key] for d in averaged if key in domains[d][m]]
            if values:
                mean[m][key] = sum(values) / len(values)
        if "base" in mean[m] and "new" in mean[m]:
            mean[m]["hm"] = harmonic_mean(mean[m]["base"], mean[m]["new"])
    return {"domains": domains, "mean": mean, "mean_domains": averaged, "source_domains": sources}
