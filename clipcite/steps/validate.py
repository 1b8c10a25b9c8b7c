"""Step validate: score one candidate model on the validation split, the input of ``select``.

Reads the model folder (its ``clipcite.json`` and ``train_summary.json``) and the splits' ``val/`` only: never an
eval set, so what the selection sees cannot come from test labels. Output folder: ``validation.json``, the
candidate as :class:`clipcite.selection.Candidate` holds it. With tracking, a nested run ``validate-<method>`` holds
the same values, so MLflow's run comparison lines the candidates up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys

from clipcite import storage, tracking
from clipcite.artifacts import VALIDATION_FILE
from clipcite.config import Config
from clipcite.evaluate import predict_models
from clipcite.metrics import top1
from clipcite.models import load_saved
from clipcite.selection import Candidate
from clipcite.steps.common import (
    base_parser,
    class_prompts,
    config_from,
    read_json,
    read_split,
    resolve_device,
    setup_logging,
)

log = logging.getLogger(__name__)


def run(
    model_uri: str,
    splits_uri: str,
    out_uri: str,
    config: Config,
    *,
    tracking_uri: str | None = None,
    mlflow_run_id: str = "",
) -> dict:
    """The candidate in ``model_uri`` scored on ``<splits_uri>/val``: top-1 (points) and what it cost to train
    (from its ``train_summary.json``); written to ``<out_uri>/validation.json`` and returned."""
    candidate = score(model_uri, splits_uri, config)
    body = dataclasses.asdict(candidate)
    with tracking.step_run(tracking_uri, mlflow_run_id, f"validate-{candidate.method}") as step:
        step.log_params({"method": candidate.method})
        step.log_metrics({k: v for k, v in body.items() if k != "method"}, digits=tracking.METRIC_DIGITS)
    with storage.staged_dir(out_uri) as tmp:
        (tmp / VALIDATION_FILE).write_text(json.dumps(body, indent=2))
    log.info("%s: validation top-1 %.2f on %d images", candidate.method, candidate.val_top1, candidate.val_images)
    return body


def score(model_uri: str, splits_uri: str, config: Config) -> Candidate:
    """The candidate as the selection sees it (an empty validation split scores 0 on 0 images: ``select`` says
    so)."""
    device = resolve_device(config.device)
    rows, classes = read_split(storage.join(splits_uri, "val"))
    summary = read_json(storage.join(model_uri, "train_summary.json"))
    with storage.local_dir(model_uri) as folder:
        model, meta = load_saved(folder, device=device)
    accuracy = 0.0
    if len(rows):
        _, prompts = class_prompts(classes, config)
        preds, target = predict_models(
            {"candidate": model},
            rows,
            prompts,
            batch_size=config.eval.batch_size,
            device=device,
            num_workers=config.eval.num_workers,
            precision=config.train.precision,
            source=f"{splits_uri}/val: ",
        )
        accuracy = top1(preds["candidate"], target)
    return Candidate(
        method=meta["method"],
        val_top1=float(accuracy),
        val_images=len(rows),
        trainable_parameters=int(summary["trainable_parameters"]),
        seconds=float(summary["seconds"]),
        artefact_bytes=int(summary["artefact_bytes"]),
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("validate", "Score a fine-tuned model on the validation split (what select compares).")
    parser.add_argument("--model", required=True, help="output folder of finetune")
    parser.add_argument("--splits", required=True, help="output folder of sample-splits")
    parser.add_argument("--out", required=True, help="folder or s3:// prefix for validation.json")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    print(json.dumps(run(args.model, args.splits, args.out, config_from(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
