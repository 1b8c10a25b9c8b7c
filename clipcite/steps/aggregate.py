"""Mean and std over seeds of several evaluate outputs (``clipcite aggregate``): a table of the paper's shape."""

from __future__ import annotations

import json

from clipcite import storage
from clipcite.evaluation.metrics import aggregate
from clipcite.records import EvalReport

# What evaluations averaged over seeds must share: the same method and recipe, evaluated the same way.
SAME = ("method", "alpha", "template", "train_domains", "mean_over", "mean_domains")


def aggregate_runs(metric_uris: list[str], out_uri: str, *, allow_mixed: bool = False) -> dict:
    """Mean and std over seeds of the per-domain and mean metrics of several evaluate outputs; evaluations of
    different methods, settings or domains are refused unless ``allow_mixed`` (a mean of unrelated runs reads as a
    seed average)."""
    runs = [_report(u) for u in metric_uris]
    facts = {key: [_fact(r, key) for r in runs] for key in (*SAME, "domains")}
    differ = {key: values for key, values in facts.items() if len({str(v) for v in values}) > 1}
    if differ and not allow_mixed:
        detail = "; ".join(f"{key}: {', '.join(map(str, values))}" for key, values in differ.items())
        raise ValueError(
            f"these evaluations are not seeds of one run ({detail}, in the order given: {', '.join(metric_uris)}); "
            "pass --allow-mixed to average them anyway"
        )
    result = aggregate([{"domains": r.domains, "mean": r.mean} for r in runs])
    result["runs"] = metric_uris
    storage.write_text(out_uri, json.dumps(result, indent=2))
    return result


def _report(uri: str) -> EvalReport:
    """An evaluate output folder, or its metrics.json itself."""
    if uri.endswith(".json"):
        return EvalReport.from_dict(json.loads(storage.read_text(uri)), uri)
    return EvalReport.read(uri)


def _fact(run: EvalReport, key: str):
    """What must agree across seeds: the domains evaluated; alpha, or the grid it was chosen from (seeds of one
    recipe may choose different alphas on their own validation images)."""
    if key == "domains":
        return sorted(run.domains)
    if key == "alpha" and run.alpha_grid:
        return {"alpha_grid": list(run.alpha_grid)}
    value = getattr(run, key)
    return list(value) if isinstance(value, tuple) else value
