"""Step 3, finetune: CLIP-CITE (or another method of clipcite/training/methods) on the few-shot train split.

Output folder: the model (an open_clip ``local-dir`` folder plus ``clipcite.json``, and the method's own files:
``lora_adapter.safetensors`` for LoRA, ``class_head.safetensors`` for the linear probe), ``curves.jsonl`` (every loss
term and the learning rate per step) and ``train_summary.json`` (with what the method trained and what it weighs:
``trainable_parameters``, ``seconds``, ``artefact_bytes``). Epoch checkpoints go to ``checkpoint_dir``, a
folder or an ``s3://`` prefix (default: beside a local output, ``<out>.checkpoints``; under the temp dir for an
s3:// output); a rerun with the same inputs resumes from there, so on a cluster a durable ``s3://`` prefix lets a
preempted or retried pod continue. They are removed once the model is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from clipcite import records, storage
from clipcite.config import Config, dump_yaml, to_dict
from clipcite.data.table import ClassList
from clipcite.logs import setup_logging
from clipcite.model.clip import LoadedModel, load_model, resolve_device, save_model
from clipcite.model.nonfinite import NonFiniteError, nonfinite_weights
from clipcite.records import WEIGHTS_FILE
from clipcite.steps import kfp_backend
from clipcite.steps.artifact_io import class_prompts, read_json, read_split
from clipcite.steps.command_line import base_parser, config_from
from clipcite.steps.validate import choose_alpha, require_validation
from clipcite.tracking import runs
from clipcite.train_params import ENSEMBLE_METHODS, FitParams
from clipcite.training import distributed
from clipcite.training.loop import FitResult, fit
from clipcite.training.teacher_cache import TeacherCache, check_cache, load_cache

log = logging.getLogger(__name__)


def run(
    splits_uri: str,
    out_uri: str,
    config: Config,
    *,
    cache_uri: str | None = None,
    checkpoint_dir: str | None = None,
    log_fn: Callable[[dict, int], None] | None = None,
    keep_checkpoint: bool = False,
    tracking_uri: str | None = None,
    mlflow_run_id: str = "",
    splits_ref: str = "",
    method: str = "",
) -> dict:
    """Fine-tune, save the model to ``out_uri``; with ``tracking_uri`` and ``mlflow_run_id`` (the pipeline's run)
    also log params, datasets, every loss term per step, throughput and the outputs to a nested run.
    ``splits_ref`` is the splits' address to record (KFP's ``.uri``) when ``splits_uri`` is a pod-local path.
    ``method`` ("" = ``train.method``) trains one candidate of several (docs/cluster.md "Several methods"): that
    method, in a nested run ``finetune-<method>``; the pipeline's run keeps the shared config's params.

    ``CLIPCITE_NPROC_PER_NODE`` > 1 runs it in that many torchrun ranks (data parallel; rank 0 writes and logs)."""
    ranks = distributed.requested_ranks()
    if ranks > 1:
        options = {"cache_uri": cache_uri, "checkpoint_dir": checkpoint_dir, "keep_checkpoint": keep_checkpoint}
        # log_fn cannot cross processes: each rank logs through its own client
        options.update(tracking_uri=tracking_uri, mlflow_run_id=mlflow_run_id, splits_ref=splits_ref, method=method)
        return distributed.launch(run, splits_uri, out_uri, config, nproc=ranks, **options)
    shared = config
    if method:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, method=method))
        config.train.validate()
        # select needs validation scores: fail now, not after training every candidate
        require_validation(splits_uri, "select among the candidate methods on", "run one method")
    with distributed.process_group(resolve_device(config.device)):
        run_id = mlflow_run_id if distributed.is_main() else ""  # rank 0 alone logs to MLflow
        with runs.step_run(tracking_uri, run_id, step_name(method)) as step:
            summary = _run(
                splits_uri,
                out_uri,
                config,
                step,
                shared=shared,
                cache_uri=cache_uri,
                checkpoint_dir=checkpoint_dir,
                log_fn=log_fn,
                keep_checkpoint=keep_checkpoint,
                splits_ref=splits_ref or splits_uri,
            )
        distributed.barrier()  # no rank returns before rank 0 has written the model
    return summary


def _run(
    splits_uri: str,
    out_uri: str,
    config: Config,
    step: runs.StepRun,
    *,
    shared: Config,
    cache_uri: str | None,
    checkpoint_dir: str | None,
    log_fn: Callable[[dict, int], None] | None,
    keep_checkpoint: bool,
    splits_ref: str,
) -> dict:
    train_uri = storage.join(splits_uri, "train")
    rows, classes = read_split(train_uri)
    rows = rows.local(source=f"{train_uri}: ")  # shuffled batches: one local copy, then one read per image
    template, prompts = class_prompts(classes, config)
    params = dataclasses.replace(config.train, batch_size=config.batch_size_for(classes.dataset))
    device = resolve_device(config.device)
    spec = config.model
    student = load_model(spec.arch, spec.pretrained, init_seed=spec.init_seed, device=device)
    teacher, cache = _teacher_inputs(config, params, student, [r["id"] for r in rows], prompts, cache_uri, device)

    curves: list[dict] = []

    def record(metrics: dict, index: int) -> None:
        curves.append({"step": index, **metrics})
        step.log_metrics({f"train/{k}": v for k, v in metrics.items()}, index)
        if log_fn is not None:
            log_fn(metrics, index)

    _log_inputs(step, splits_uri, splits_ref, config, classes, shared)

    ckpt = checkpoint_dir or str(_default_checkpoint_dir(out_uri))
    fit_params = _fit_params(params)
    if fit_params is not params:  # before hours of training: the grid needs validation images
        require_validation(splits_uri, "choose train.alpha_grid on", "leave train.alpha_grid empty")
    started = time.perf_counter()
    with storage.mirrored_dir(ckpt) as (local_ckpt, save_durably):
        result = fit(
            student,
            rows,
            prompts,
            fit_params,
            seed=config.seed,
            device=device,
            teacher=teacher,
            cache=cache,
            checkpoint_dir=local_ckpt,
            on_checkpoint=save_durably,
            log_fn=record,
            source=f"{train_uri}: ",
        )
    broken = nonfinite_weights(result.state_dict)
    if broken:  # the loop's guard should have stopped first; never save such weights
        raise NonFiniteError(f"{out_uri}: not written: the trained weights hold NaN/inf in {broken[:5]}")
    grid = None
    if fit_params is not params:  # train.alpha_grid, on every rank: scoring shares the images out over the ranks
        state, grid = choose_alpha(
            student, result.state_dict, result.zeroshot_state, params.alpha_grid, splits_uri, config, device
        )
        result = dataclasses.replace(result, state_dict=state, alpha=grid["chosen"])
    seconds = time.perf_counter() - started  # training, and the grid's validation passes: what the method costs
    if not distributed.is_main():
        return _train_summary(params, result, len(rows), len(prompts), seconds, device)  # rank 0 writes the model
    if grid is not None:
        for a, score in zip(grid["alphas"], grid["val_top1"], strict=True):  # a chart of val top-1 over alpha x 100
            step.log_metrics({"alpha_grid/val_top1": score}, round(a * 100))
        step.log_metrics({"alpha_grid/chosen": grid["chosen"]})
    summary = _train_summary(params, result, len(rows), len(prompts), seconds, device)
    summary["teacher"] = "cache" if cache is not None else ("online" if teacher else "none")
    if grid is not None:
        summary["alpha_grid"] = grid
    meta = _model_meta(params, classes, template, config, result) | ({"alpha_grid": grid} if grid else {})
    with storage.staged_dir(out_uri) as tmp:
        save_model(student, result.state_dict, tmp, meta)
        for name, body in result.files.items():
            (tmp / name).write_bytes(body)
        summary |= _sizes(tmp, result)
        (tmp / "curves.jsonl").write_text("".join(json.dumps(c) + "\n" for c in curves))
        (tmp / "train_summary.json").write_text(json.dumps(summary, indent=2))
        step.log_artifacts(tmp / "curves.jsonl")
        step.log_artifacts(tmp / "train_summary.json")
    logged = ("images_per_second", "seconds", "steps", "epochs", "trainable_parameters", "artefact_bytes")
    step.log_metrics({k: summary[k] for k in logged})
    if not keep_checkpoint:  # the model is published: its checkpoints have done their job
        storage.remove_dir(ckpt)
    log.info("wrote model %s: %s", out_uri, summary)
    return summary


def _fit_params(params: FitParams) -> FitParams:
    """What fit trains with: ``params``, or with ``train.alpha_grid`` set the same recipe without the ensemble
    (alpha 1, chosen afterwards on validation). A method without an ensemble ignores the grid, and says so."""
    if not params.alpha_grid:
        return params
    if params.method not in ENSEMBLE_METHODS:
        log.warning("train.alpha_grid ignored: %s saves no weight-space ensemble", params.method)
        return params
    lora = dataclasses.replace(params.lora, ensemble_alpha=1.0)
    # the grid leaves training as it is: a changed grid still resumes from the same checkpoint
    return dataclasses.replace(params, alpha=1.0, lora=lora, alpha_grid=())


def _teacher_inputs(
    config: Config,
    params: FitParams,
    student: LoadedModel,
    ids: list[str],
    prompts: list[str],
    cache_uri: str | None,
    device: str,
) -> tuple[LoadedModel | None, TeacherCache | None]:
    """(online teacher, teacher cache): the cache when one is given (checked against this run's model, seed,
    epochs, ids, prompts and crops), else the frozen base model when L_VLD needs a teacher, else neither."""
    spec = config.model
    if cache_uri:
        with storage.local_dir(cache_uri) as folder:
            cache = load_cache(folder)
        check_cache(
            cache,
            identity=student.identity,
            seed=config.seed,
            epochs=params.epochs,
            ids=ids,
            prompts=prompts,
            crop_scale=params.crop_scale,
            crop_ratio=params.crop_ratio,
            where=f"teacher cache {cache_uri}",
        )
        return None, cache
    if params.needs_teacher() and config.teacher.mode == "cache":
        raise ValueError(
            "teacher.mode=cache but no teacher cache was given: run cache-teacher and pass "
            "--cache, or set teacher.mode=online"
        )
    if params.needs_teacher():
        return load_model(spec.arch, spec.pretrained, init_seed=spec.init_seed, device=device), None
    return None, None


def _train_summary(
    params: FitParams, result: FitResult, images: int, classes: int, seconds: float, device: str
) -> dict:
    """train_summary.json: what ran and how fast."""
    return {
        "method": params.method,
        "skipped_steps": result.skipped_steps,
        "steps": result.steps,
        "epochs": result.epochs,
        "alpha": result.alpha,
        "trainable_parameters": result.trainable_parameters,
        "logit_scale": result.logit_scale,
        "batch_size": params.batch_size,
        "images": images,
        "classes": classes,
        "images_per_second": result.images_per_second,
        "seconds": seconds,
        "device": device,
    }


def _model_meta(params: FitParams, classes: ClassList, template: str, config: Config, result: FitResult) -> dict:
    """clipcite.json beside the saved weights: what evaluate, register and the served model need to know (no run
    ids: the pipeline hands its MLflow run to the steps that log, and the registry links a version to its run)."""
    return {
        "alpha": result.alpha,
        "method": params.method,
        "classnames": list(classes.names),
        "template": template,
        "dataset": classes.dataset,
        "seed": config.seed,
        "steps": result.steps,
        "logit_scale": result.logit_scale,  # the loss temperature the run used (train.logit_scale resolved)
        "config": to_dict(config),
        **result.meta,  # the method's own entries (lora: its rank and adapter file; linear_probe: its class head)
    }


def _sizes(folder: Path, result: FitResult) -> dict:
    """What the run's model weighs: ``model_bytes`` (the folder as served) and ``artefact_bytes``, what the method
    adds to the base model: its own files when it writes some (LoRA's adapter, the probe's class head), else the
    full weights when it trained (a full fine-tune), else 0 (zero-shot)."""
    weights = (folder / WEIGHTS_FILE).stat().st_size
    extra = {name: (folder / name).stat().st_size for name in result.files}
    return {
        "model_bytes": sum(f.stat().st_size for f in folder.iterdir() if f.is_file()),
        "artefact_bytes": sum(extra.values()) if extra else (weights if result.steps > 0 else 0),
        "file_bytes": {WEIGHTS_FILE: weights, **extra},
    }


def step_name(method: str = "") -> str:
    """The step's name (its nested run, its checkpoint folder): ``finetune``, or ``finetune-<method>`` for one
    candidate of several."""
    return records.step_name("finetune", method)


def _log_inputs(
    step: runs.StepRun, splits_uri: str, splits_ref: str, config: Config, classes: ClassList, shared: Config
) -> None:
    """The resolved config and data identity (source digest, split id digests) as params; the splits as inputs.
    The pipeline's run gets the ``shared`` config (every candidate's the same: MLflow params cannot change)."""
    if not step.enabled:
        return
    manifest = read_json(storage.join(splits_uri, "manifest.json"))
    data = {"sources_digest": manifest["sources_digest"], "splits_uri": splits_ref}
    step.log_params({"config": to_dict(config), "data": data})
    step.log_params({"config": to_dict(shared), "data": data}, parent=True)
    step.log_text(dump_yaml(config), "config.yaml")
    for name in ("train", "val"):
        info = manifest["sets"].get(name)
        if info and info["rows"]:
            step.log_dataset(
                f"{classes.dataset or 'data'}-{name}",
                storage.join(splits_ref, name),
                info["ids_sha256"],
                "training" if name == "train" else "validation",
                rows=info["rows"],
                classes=len(classes.names),
                parent=True,
            )


def checkpoint_uri(root: str, kfp_run_id: str, method: str = "") -> str | None:
    """Where a pipeline run's finetune keeps its checkpoints: ``<root>/<KFP run id>/finetune`` (one per run, so a
    retried or preempted pod of the same run resumes and another run never does; ``finetune-<method>`` for each
    candidate of several), or None (in the pod) without a root. A literal placeholder for the run id is refused (it
    would be every run's folder)."""
    return storage.join(root, kfp_backend.check_run_id(kfp_run_id) or "local", step_name(method)) if root else None


def _default_checkpoint_dir(out_uri: str) -> Path:
    if storage.is_s3(out_uri):
        key = hashlib.sha256(out_uri.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / "clipcite-checkpoints" / key  # the image's workdir is read-only
    out = Path(out_uri).absolute()
    return out.with_name(out.name + ".checkpoints")


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("finetune", "Fine-tune CLIP on the few-shot train split (CLIP-CITE by default).")
    parser.add_argument("--splits", required=True, help="output folder of sample-splits")
    parser.add_argument("--cache", help="output folder of cache-teacher (teacher.mode=cache)")
    parser.add_argument("--out", required=True, help="folder or s3:// prefix for the model")
    parser.add_argument(
        "--checkpoint-dir", help="where epoch checkpoints go, a folder or s3:// prefix (default: <out>.checkpoints)"
    )
    parser.add_argument("--keep-checkpoint", action="store_true", help="keep the last epoch checkpoint")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    summary = run(
        args.splits,
        args.out,
        config_from(args),
        cache_uri=args.cache,
        checkpoint_dir=args.checkpoint_dir,
        keep_checkpoint=args.keep_checkpoint,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
