"""Step validate: score one candidate model on the validation split, the input of ``select``.

Reads the model folder (its ``clipcite.json`` and ``train_summary.json``) and the splits' ``val/`` only: never an
eval set, so what the selection sees cannot come from test labels. Output folder: ``validation.json``, the
candidate as :class:`clipcite.evaluation.selection.Candidate` holds it. With tracking, a nested run
``validate-<method>`` holds the same values, so MLflow's run comparison lines the candidates up.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Sequence

import torch

from clipcite import storage
from clipcite.config import Config
from clipcite.evaluation.metrics import top1
from clipcite.evaluation.predict import predict_models
from clipcite.evaluation.selection import Candidate, alpha_rule, pick_alpha
from clipcite.logs import setup_logging
from clipcite.model.clip import LoadedModel, average_weights, load_saved, resolve_device
from clipcite.records import VALIDATION_FILE, step_name
from clipcite.steps.artifact_io import class_prompts, read_json, read_split
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
) -> dict:
    """The candidate in ``model_uri`` scored on ``<splits_uri>/val``: top-1 (points) and what it cost to train
    (from its ``train_summary.json``); written to ``<out_uri>/validation.json`` and returned."""
    candidate = score(model_uri, splits_uri, config)
    body = dataclasses.asdict(candidate)
    with runs.step_run(tracking_uri, mlflow_run_id, step_name("validate", candidate.method)) as step:
        step.log_params({"method": candidate.method})
        step.log_metrics({k: v for k, v in body.items() if k != "method"}, digits=runs.METRIC_DIGITS)
    with storage.staged_dir(out_uri) as tmp:
        (tmp / VALIDATION_FILE).write_text(json.dumps(body, indent=2))
    log.info("%s: validation top-1 %.2f on %d images", candidate.method, candidate.val_top1, candidate.val_images)
    return body


def score(model_uri: str, splits_uri: str, config: Config) -> Candidate:
    """The candidate as the selection sees it (an empty validation split scores 0 on 0 images: ``select`` says
    so)."""
    device = resolve_device(config.device)
    summary = read_json(storage.join(model_uri, "train_summary.json"))
    with storage.local_dir(model_uri) as folder:
        model, meta = load_saved(folder, device=device)
    accuracy, images = val_top1(model, splits_uri, config, device)
    return Candidate(
        method=meta["method"],
        val_top1=float(accuracy),
        val_images=images,
        trainable_parameters=int(summary["trainable_parameters"]),
        seconds=float(summary["seconds"]),
        artefact_bytes=int(summary["artefact_bytes"]),
    )


def val_top1(model: LoadedModel, splits_uri: str, config: Config, device: str) -> tuple[float, int]:
    """(top-1 in points, images) of ``model`` on ``<splits_uri>/val``; (0.0, 0) for an empty validation split."""
    rows, prompts = _val_set(splits_uri, config)
    return _top1(model, rows, prompts, splits_uri, config, device), len(rows)


def _val_set(splits_uri: str, config: Config):
    """The validation split's rows and its classes' prompts."""
    rows, classes = read_split(storage.join(splits_uri, "val"))
    return rows, class_prompts(classes, config)[1]


def _top1(model: LoadedModel, rows, prompts: list[str], splits_uri: str, config: Config, device: str) -> float:
    if not len(rows):
        return 0.0
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
    return float(top1(preds["candidate"], target))


def require_validation(splits_uri: str, purpose: str, otherwise: str, rows: int | None = None) -> None:
    """Fail, saying what to change, when the splits hold no validation images (``rows``: counted already; else the
    manifest's count, so a run fails before it trains)."""
    if rows is None:
        manifest = read_json(storage.join(splits_uri, "manifest.json"))
        rows = int(manifest.get("sets", {}).get("val", {}).get("rows") or 0)
    if not rows:
        raise ValueError(
            f"{splits_uri}/val: no validation images to {purpose}: give the data a val split or more train images "
            f"than the shots (splits.val_shots), or {otherwise}"
        )


def choose_alpha(
    student: LoadedModel,
    finetuned: dict[str, torch.Tensor],
    zeroshot: dict[str, torch.Tensor],
    grid: Sequence[float],
    splits_uri: str,
    config: Config,
    device: str,
) -> tuple[dict[str, torch.Tensor], dict]:
    """``train.alpha_grid``: the weight-space ensemble's alpha chosen on the validation split
    (clipcite.evaluation.selection's rule). Each alpha is only an average of two weight sets, so the grid costs one
    validation pass per alpha, not a training run. Leaves ``student`` at the chosen weights; returns (them, the record
    train_summary.json keeps)."""
    rows, prompts = _val_set(splits_uri, config)  # read once for every alpha
    require_validation(splits_uri, "choose train.alpha_grid on", "leave train.alpha_grid empty", rows=len(rows))
    scores: dict[float, float] = {}
    for alpha in grid:
        student.model.load_state_dict(average_weights(finetuned, zeroshot, alpha))
        scores[alpha] = _top1(student, rows, prompts, splits_uri, config, device)
        log.info("alpha %.2f: validation top-1 %.2f on %d images", alpha, scores[alpha], len(rows))
    chosen = pick_alpha(scores)
    state = average_weights(finetuned, zeroshot, chosen)
    student.model.load_state_dict(state)
    record = {
        "alphas": list(scores),
        "val_top1": list(scores.values()),
        "val_images": len(rows),
        "chosen": chosen,
        "rule": alpha_rule(),
    }
    return state, record


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
