"""Step 5, register: merge the per-domain evaluations and record the model with them.

This version records to files only (the pipeline keeps them as artifacts): ``record`` gets ``registration.json``
(the model's location and identity, the merged metrics) and ``summary`` a Markdown report. Registration in the
MLflow model registry with a promotion gate builds on this (see the MLflow milestone).
"""

from __future__ import annotations

import json
import logging
import sys

from clipcite import storage
from clipcite.evaluate import summarise
from clipcite.models import META_FILE
from clipcite.report import markdown
from clipcite.steps.common import read_json, setup_logging

log = logging.getLogger(__name__)


def merge_reports(report_uris: list[str]) -> dict:
    """Join evaluate outputs that each cover some domains into one metrics body (domains, mean, sets)."""
    bodies = [read_json(storage.join(uri, "metrics.json")) for uri in report_uris]
    if not bodies:
        raise ValueError("no evaluation reports to register")
    sets: dict = {}
    for body in bodies:
        overlap = set(sets) & set(body["sets"])
        if overlap:
            raise ValueError(f"eval set(s) {sorted(overlap)} appear in more than one report")
        sets.update(body["sets"])
    models = [m for m in ("zeroshot", "finetuned") if m in next(iter(sets.values()))]
    merged = {k: bodies[0].get(k) for k in ("model", "method", "alpha", "seed", "template")}
    return {**merged, **summarise(sets, models), "sets": sets, "models": models}


def run(
    model_uri: str,
    report_uris: list[str],
    record_uri: str,
    summary_uri: str,
    *,
    registered_model_name: str,
    experiment_name: str = "",
) -> dict:
    body = merge_reports(report_uris)
    meta = json.loads(storage.read_text(storage.join(model_uri, META_FILE)))  # not the weights
    record = {
        "registered_model_name": registered_model_name,
        "experiment_name": experiment_name,
        "model_uri": model_uri,
        "base_identity": meta.get("base_identity"),
        "classnames": meta.get("classnames"),
        "method": meta.get("method"),
        "alpha": meta.get("alpha"),
        "domains": body["domains"],
        "mean": body["mean"],
    }
    with storage.staged_dir(record_uri) as tmp:
        (tmp / "registration.json").write_text(json.dumps(record, indent=2))
        (tmp / "metrics.json").write_text(json.dumps(body, indent=2))
    title = f"{registered_model_name}: {body['method']} (alpha={body['alpha']}, seed={body['seed']})"
    storage.write_text(summary_uri, markdown(body, body["models"], title=title))
    log.info("recorded %s for %s", record_uri, registered_model_name)
    return body


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Merge evaluations and record the model with them.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--report", action="append", required=True, help="evaluate output (repeatable)")
    parser.add_argument("--out", required=True, help="folder for registration.json and metrics.json")
    parser.add_argument("--summary", required=True, help="Markdown file to write")
    parser.add_argument("--name", default="clipcite", help="registered model name")
    args = parser.parse_args(argv)
    setup_logging()
    body = run(args.model, args.report, args.out, args.summary, registered_model_name=args.name)
    print(markdown(body, body["models"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
