"""Mean and std over seeds of several evaluate outputs (``clipcite aggregate``): a table of the paper's shape."""

from __future__ import annotations

import json

from clipcite import storage
from clipcite.metrics import aggregate
from clipcite.steps.common import read_json


def aggregate_runs(metric_uris: list[str], out_uri: str) -> dict:
    """Mean and std over seeds of the per-domain and mean metrics of several evaluate outputs."""
    runs = [read_json(u if u.endswith(".json") else storage.join(u, "metrics.json")) for u in metric_uris]
    result = aggregate([{"domains": r["domains"], "mean": r["mean"]} for r in runs])
    result["runs"] = metric_uris
    storage.write_text(out_uri, json.dumps(result, indent=2))
    return result
