"""Classification metrics and their aggregation over seeds. Pure functions on label tensors and dicts."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def top1(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((pred == target).float().mean()) if len(target) else float("nan")


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C, C] counts; row = true class, column = predicted class."""
    flat = target.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    """Accuracy (percent) of each true class; NaN for a class with no test image."""
    totals = confusion.sum(dim=1)
    return [100.0 * float(confusion[c, c]) / float(t) if t else float("nan") for c, t in enumerate(totals)]


def harmonic_mean(base: float, new: float) -> float:
    """HM = 2BN / (B + N) (method.md, base-to-new)."""
    return 2 * base * new / (base + new) if base + new > 0 else 0.0


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def aggregate(runs: Sequence[dict]) -> dict:
    """Mean and std over seeds of every number found at the same place in each run's dict.

    ``{"a": {"top1": 80}}`` x 3 -> ``{"a": {"top1": {"mean": .., "std": .., "n": 3}}}``; keys missing in some
    runs are aggregated over the runs that have them. Where ``base`` and ``new`` sit beside ``hm``, ``hm.mean`` is
    the HM of the mean Base and mean New (method.md: 81.06 = HM(85.48, 77.08)); ``hm.std`` is the spread of the
    per-run HMs and ``hm.mean_of_runs`` their plain mean.
    """
    if not runs:
        raise ValueError("nothing to aggregate: no runs given")
    out: dict = {}
    keys = sorted({k for run in runs for k in run})
    for key in keys:
        values = [run[key] for run in runs if key in run]
        if all(isinstance(v, dict) for v in values):
            out[key] = aggregate(values)
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            mean, std = mean_std([float(v) for v in values])
            out[key] = {"mean": mean, "std": std, "n": len(values)}
    if all(isinstance(out.get(k), dict) and "mean" in out[k] for k in ("base", "new", "hm")):
        out["hm"] = {
            "mean": harmonic_mean(out["base"]["mean"], out["new"]["mean"]),
            "std": out["hm"]["std"],
            "n": out["hm"]["n"],
            "mean_of_runs": out["hm"]["mean"],
        }
    return out
