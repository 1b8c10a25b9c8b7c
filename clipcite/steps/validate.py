"""Step validate: score one candidate model on the validation split, the input of ``select``.

Reads the model folder (its ``clipcite.json`` and ``train_summary.json``) and the splits' ``val/`` only: never an
eval set, so what the selection sees cannot come from test labels. Output folder: ``validation.json``, the
candidate as :class:`clipcite.records.Candidate` holds it. With tracking, a nested run
``validate-<method>`` holds the same values, so MLflow's run comparison lines the candidates up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys

from clipcite import storage
from clipcite.config import Config
from clipcite.evaluation.predict import scorer, validation_scores
from clipcite.logs import setup_logging
from clipcite.model.clip import LoadedModel, load_saved, resolve_device
from clipcite.records import Candidate, TrainSummary, step_name
from clipcite.steps.artifact_io import read_val_split
from clipcite.steps.command_line import base_parser, config_from
from clipcite.tracking import runs

log = logging.getLogger(__name__)


def run(
    model_uri: str,
    splits_uri: str,
    out_uri: str,
    config: Config,
    *,
    tracking_uri: str | None = None,
    mlflow_run_id: str = "",
) -> Candidate:
    """The candidate in ``model_uri`` scored on ``<splits_uri>/val``: top-1 (points) and what it cost to train
    (from its ``train_summary.json``); written to ``<out_uri>/validation.json`` and returned."""
    candidate = score(model_uri, splits_uri, config)
    with runs.step_run(tracking_uri, mlflow_run_id, step_name("validate", candidate.method)) as step:
        step.log_params({"method": candidate.method})
        values = {k: v for k, v in dataclasses.asdict(candidate).items() if k != "method"}
        step.log_metrics(values, digits=runs.METRIC_DIGITS)
    with storage.staged_dir(out_uri) as tmp:
        candidate.write(tmp)
    log.info("%s: validation top-1 %.2f on %d images", candidate.method, candidate.val_top1, candidate.val_images)
    return candidate


def score(model_uri: str, splits_uri: str, config: Config) -> Candidate:
    """The candidate as the selection sees it (an empty validation split scores 0 on 0 images: ``select`` says
    so)."""
    device = resolve_device(config.device)
    summary = TrainSummary.read(model_uri)
    with storage.local_dir(model_uri) as folder:
        model, meta = load_saved(folder, device=device)
    rows, prompts = read_val_split(splits_uri, config)
    scores = validation_scores(model, rows, prompts, config, device, source=f"{splits_uri}/val: ")
    return Candidate(
        method=meta.method,
        val_top1=scores["top1"],
        val_images=len(rows),
        trainable_parameters=summary.trainable_parameters,
        seconds=summary.seconds,
        artefact_bytes=summary.artefact_bytes,
        val_balanced_accuracy=scores["balanced_accuracy"],
        metric=config.selection.metric,
    )


def val_top1(model: LoadedModel, splits_uri: str, config: Config, device: str) -> tuple[float, int]:
    """(top-1 in points, images) of ``model`` on ``<splits_uri>/val``; (0.0, 0) for an empty validation split."""
    rows, prompts = read_val_split(splits_uri, config)
    return scorer(rows, prompts, config, device, source=f"{splits_uri}/val: ")(model), len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("validate", "Score a fine-tuned model on the validation split (what select compares).")
    parser.add_argument("--model", required=True, help="output folder of finetune")
    parser.add_argument("--splits", required=True, help="output folder of sample-splits")
    parser.add_argument("--out", required=True, help="folder or s3:// prefix for validation.json")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    candidate = run(args.model, args.splits, args.out, config_from(args))
    print(json.dumps(dataclasses.asdict(candidate), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
