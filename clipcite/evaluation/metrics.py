"""Classification metrics, the per-domain summary and aggregation over seeds. Pure functions on label arrays and
dicts; numpy, not torch, so that the steps that only read metrics (register) start without torch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def top1(pred: ArrayLike, target: ArrayLike) -> float:
    """Top-1 accuracy in percent (``pred`` and ``target``: label arrays or tensors of one length)."""
    pred, target = np.asarray(pred), np.asarray(target)
    return 100.0 * float((pred == target).mean()) if len(target) else float("nan")


def confusion_matrix(pred: ArrayLike, target: ArrayLike, num_classes: int) -> np.ndarray:
    """[C, C] counts; row = true class, column = predicted class."""
    flat = np.asarray(target, dtype=np.int64) * num_classes + np.asarray(pred, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


# The summary's metrics, in the order tables show them: top-1 and balanced accuracy per domain (all classes), or
# Base / New / HM under base-to-new.
SUMMARY_METRICS = ("top1", "balanced_accuracy", "base", "new", "hm")
IMBALANCE_RATIO = 1.5  # decision: classes whose sizes differ by more than this make top-1 alone misleading


def balanced_accuracy(confusion: np.ndarray) -> float:
    """Mean per-class recall in percent over the classes that have test images (clip_benchmark's
    ``mean_per_class_recall``): a model that always answers the largest class scores 100 / C, whatever the sizes."""
    recalls = [r for r in per_class_accuracy(confusion) if not np.isnan(r)]
    return float(np.mean(recalls)) if recalls else float("nan")


def per_class_accuracy(confusion: np.ndarray) -> list[float]:
    """Accuracy (percent) of each true class; NaN for a class with no test image."""
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=1)
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


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of every number found at the same place in each run's dict.

    ``{"a": {"top1": 80}}`` x 3 -> ``{"a": {"top1": {"mean": .., "std": .., "n": 3}}}``; keys missing in some
    runs are aggregated over the runs that have them. Where ``base`` and ``new`` sit beside ``hm``, ``hm.mean`` is
    the HM of the mean Base and mean New (method.md: 81.06 = HM(85.48, 77.08)); ``hm.std`` is the spread of the
    per-run HMs and ``hm.mean_of_runs`` their plain mean.
    """
    if not runs:
        raise ValueError("nothing to aggregate: no runs given")
    out: dict[str, Any] = {}
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


MEAN_OVER = ("ood", "all")


def summarise(
    sets: dict[str, dict[str, Any]],
    models: list[str],
    source_domains: tuple[str, ...] | list[str] = (),
    mean_over: str = "ood",
) -> dict[str, Any]:
    """Per domain: top-1 (all classes) or Base/New/HM (base-to-new sets); then the mean over domains.

    ``sets[name]`` holds ``domain``, ``subset`` (all|base|new) and one metrics dict per model name. The mean
    averages top-1, Base and New over the domains not trained on (``source_domains``; method.md's "OOD average")
    when ``mean_over="ood"`` and there are any, else over every domain; its ``hm`` is HM(mean Base, mean New).
    ``mean_domains`` says which domains it covers, ``source_domains`` which evaluated domains were trained on.
    """
    if mean_over not in MEAN_OVER:
        raise ValueError(f"eval.mean_over must be one of {MEAN_OVER}, got {mean_over!r}")
    domains: dict[str, dict[str, Any]] = {}
    for info in sets.values():
        entry = domains.setdefault(info["domain"], {m: {} for m in models})
        key = {"all": "top1", "base": "base", "new": "new"}[info["subset"]]
        for m in models:
            entry[m][key] = info[m]["top1"]
            if key == "top1" and "balanced_accuracy" in info[m]:  # sets scored before it existed have none
                entry[m]["balanced_accuracy"] = info[m]["balanced_accuracy"]
    for entry in domains.values():
        for m in models:
            if "base" in entry[m] and "new" in entry[m]:
                entry[m]["hm"] = harmonic_mean(entry[m]["base"], entry[m]["new"])
    sources = [d for d in domains if d in set(source_domains)]
    targets = [d for d in domains if d not in set(source_domains)]
    averaged = targets if mean_over == "ood" and targets else list(domains)
    mean: dict[str, dict[str, Any]] = {m: {} for m in models}
    for m in models:
        for key in ("top1", "balanced_accuracy", "base", "new"):
            values = [domains[d][m][key] for d in averaged if key in domains[d][m]]
            if values:
                mean[m][key] = sum(values) / len(values)
        if "base" in mean[m] and "new" in mean[m]:
            mean[m]["hm"] = harmonic_mean(mean[m]["base"], mean[m]["new"])
    return {"domains": domains, "mean": mean, "mean_domains": averaged, "source_domains": sources}
