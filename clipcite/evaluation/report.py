"""Human-readable outputs of an evaluation: a Markdown table and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipcite.evaluation.metrics import IMBALANCE_RATIO, SUMMARY_METRICS
from clipcite.records import EvalReport, Selection


def _fmt(value) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"  # value != value: NaN (a class with no image)


def markdown(summary: EvalReport, models: list[str], title: str = "Evaluation") -> str:
    """A heading, then :func:`table`."""
    return f"# {title}\n\n" + table(summary, models)


def table(summary: EvalReport, models: list[str], names: dict | None = None) -> str:
    """One row per domain and model: top-1 or Base / New / HM, then the mean (the domains it covers named: by
    default those not trained on, which are marked). ``names`` relabels models in the rows (``champion`` ->
    ``champion v3``)."""
    keys = [k for k in SUMMARY_METRICS if any(k in d[m] for d in summary.domains.values() for m in models)]
    header = {"top1": "Top-1", "balanced_accuracy": "Balanced", "base": "Base", "new": "New", "hm": "HM"}
    lines = [
        "| domain | model | " + " | ".join(header[k] for k in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    covered = summary.mean_domains
    trained_on = set(summary.source_domains) - set(covered)  # marked where the mean leaves them out
    rows = [
        *((f"{d} (trained on)" if d in trained_on else d, e) for d, e in summary.domains.items()),
        (f"mean of {', '.join(covered)}" if covered else "mean", summary.mean),
    ]
    names = names or {}
    for domain, entry in rows:
        for m in models:
            cells = " | ".join(_fmt(entry[m].get(k)) for k in keys)
            lines.append(f"| {domain} | {names.get(m, m)} | {cells} |")
    return "\n".join(lines) + "\n"


def _support(entry: dict[str, Any]) -> dict[str, int]:
    """Images per class of an eval set's entry (every model saw the same images)."""
    for value in entry.values():
        if isinstance(value, dict) and "support" in value:
            return {k: int(v) for k, v in value["support"].items()}
    return {}


def majority_baseline(support: dict[str, int]) -> dict[str, Any]:
    """The trivial model that always answers the largest class: its class, top-1 and balanced accuracy."""
    present = {k: v for k, v in support.items() if v}
    largest = max(present, key=lambda k: (present[k], k))
    return {
        "class": largest,
        "top1": 100.0 * present[largest] / sum(present.values()),
        "balanced_accuracy": 100.0 / len(present),
    }


def baseline_lines(summary: EvalReport) -> list[str]:
    """Under the table, per eval set of all classes: the majority-class and zero-shot baselines, and a note when the
    classes differ in size by more than IMBALANCE_RATIO (top-1 then rewards answering the large classes)."""
    lines = []
    for name, entry in summary.sets.items():
        support = _support(entry)
        if entry.get("subset") != "all" or not any(support.values()):
            continue
        base = majority_baseline(support)
        trivial = f"top-1 {_fmt(base['top1'])}, balanced {_fmt(base['balanced_accuracy'])}"
        line = f"baselines on {name}: always '{base['class']}' {trivial}"
        if "zeroshot" in entry:
            zs = entry["zeroshot"]
            line += f"; zero-shot top-1 {_fmt(zs.get('top1'))}, balanced {_fmt(zs.get('balanced_accuracy'))}"
        lines.append(line)
        sizes = [v for v in support.values() if v]
        if max(sizes) > IMBALANCE_RATIO * min(sizes):
            lines.append(
                f"note: {name}'s classes differ in size up to {max(sizes) / min(sizes):.1f}x ({min(sizes)} to "
                f"{max(sizes)} images): top-1 favours the large classes; read balanced accuracy, and gate and select "
                "by it (gate.metric=balanced_accuracy, selection.metric=balanced_accuracy)"
            )
    return lines


def per_class_lines(summary: EvalReport, models: list[str], shown: int = 30) -> list[str]:
    """Per eval set of all classes: each class's images and recall per model (the card's table)."""
    lines: list[str] = []
    for name, entry in summary.sets.items():
        support = _support(entry)
        present = [m for m in models if isinstance(entry.get(m), dict) and "per_class" in entry[m]]
        if entry.get("subset") != "all" or not support or not present:
            continue
        lines += [f"Recall per class on {name}:", "", "| class | images | " + " | ".join(present) + " |"]
        lines.append("|---|---|" + "---|" * len(present))
        for cls in list(support)[:shown]:
            cells = " | ".join(_fmt(entry[m]["per_class"].get(cls)) for m in present)
            lines.append(f"| {cls} | {support[cls]} | {cells} |")
        if len(support) > shown:
            lines.append(f"| ... {len(support) - shown} more classes (metrics.json) | | |")
        lines.append("")
    return lines


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported when a plot is drawn (0.5 s the steps that only
    write Markdown, such as register, should not pay at start-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_domains(summary: EvalReport, models: list[str], path: Path) -> None:
    """Grouped bars per domain: the headline number (HM for base-to-new, else top-1) of each model."""
    domains = list(summary.domains)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(domains) + 2), 3.6))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        values = [_headline(summary.domains[d][m]) for d in domains]
        bars = ax.bar([x + i * width for x in range(len(domains))], values, width, label=m)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(domains))], domains, rotation=20)
    ax.set_ylabel("accuracy (%)  [HM where base/new]")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title("Per-domain accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _headline(entry: dict) -> float:
    return entry.get("hm", entry.get("top1", 0.0))


def plot_confusion(confusion: list[list[int]], classnames: list[str], title: str, path: Path) -> None:
    """Row-normalised confusion matrix; class names on the axes when there are few enough to read."""
    import numpy as np

    matrix = np.asarray(confusion, dtype=float)
    matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(classnames)
    side = min(12, max(4, 0.25 * n + 2))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    if n <= 50:
        ax.set_xticks(range(n), classnames, rotation=90, fontsize=6)
        ax.set_yticks(range(n), classnames, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_selection(choice: Selection, path: Path) -> None:
    """Validation top-1 per candidate, the winner highlighted, trainable parameters under each bar; where the rows
    carry test numbers (register adds them after the choice), each candidate's test number beside it."""
    rows = choice.candidates
    tested = all(r.test is not None for r in rows)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4, (2.0 if tested else 1.3) * len(rows) + 2), 3.4))
    width = 0.4 if tested else 0.8
    xs = [i - width / 2 if tested else i for i in range(len(rows))]
    colours = ["tab:green" if r.selected else "tab:gray" for r in rows]
    bars = ax.bar(xs, [r.val_top1 for r in rows], width, color=colours, label="validation top-1")
    ax.bar_label(bars, labels=[f"{r.val_top1:.1f}\n{r.trainable_parameters:,} p" for r in rows], fontsize=7)
    if tested:
        test = ax.bar([x + width for x in xs], [r.test or 0.0 for r in rows], width, color="tab:blue", label="test")
        ax.bar_label(test, labels=[f"{r.test or 0.0:.1f}" for r in rows], fontsize=7)
        ax.legend(fontsize=7, loc="lower right", title=f"test: {choice.test_metric}", title_fontsize=7)
    ax.set_xticks(range(len(rows)), [r.method for r in rows])
    ax.set_ylabel("validation top-1 / test (%)" if tested else "validation top-1 (%)")
    ax.set_ylim(0, 115)
    ax.set_title(f"Candidates (selected: {choice.winner})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
