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
from collections.abc import Callable
from pathlib import Path

from clipcite import records, storage
from clipcite.config import Config, dump_yaml, to_dict
from clipcite.data.table import ClassList
from clipcite.evaluation.predict import Scorer, scorer
from clipcite.logs import setup_logging
from clipcite.model.clip import LoadedModel, load_model, resolve_device, save_model
from clipcite.records import CURVES_FILE, WEIGHTS_FILE, ModelMeta, SplitsManifest, TrainSummary
from clipcite.steps import kfp_backend
from clipcite.steps.artifact_io import class_prompts, read_split, read_val_split, require_validation
from clipcite.steps.command_line import base_parser, config_from
from clipcite.tracking import runs
from clipcite.train_params import FitParams
from clipcite.training import distributed
from clipcite.training.alpha_grid import grid_fit_params
from clipcite.training.candidate import Trained, train_candidate
from clipcite.training.loop import FitResult
from clipcite.training.teacher_cache import TeacherCache, check_cache, load_cache

log = logging.getLogger(__name__)


@distributed.relaunch_in_ranks(local_only=("log_fn",))  # a callback into this process: each rank logs by MLflow
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
) -> TrainSummary:
    """Fine-tune, save the model to ``out_uri``; with ``tracking_uri`` and ``mlflow_run_id`` (the pipeline's run)
    also log params, datasets, every loss term per step, throughput and the outputs to a nested run.
    ``splits_ref`` is the splits' address to record (KFP's ``.uri``) when ``splits_uri`` is a pod-local path.
    ``method`` ("" = ``train.method``) trains one candidate of several (docs/cluster.md "Several methods"): that
    method, in a nested run ``finetune-<method>``; the pipeline's run keeps the shared config's params.

    ``CLIPCITE_NPROC_PER_NODE`` > 1 runs it in that many torchrun ranks (data parallel; rank 0 writes and logs)."""
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
) -> TrainSummary:
    train_uri = storage.join(splits_uri, "train")
    rows, classes = read_split(train_uri)
    rows = rows.local(source=f"{train_uri}: ")  # shuffled batches: one local copy, then one read per image
    template, prompts = class_prompts(classes, config)
    params = dataclasses.replace(config.train, batch_size=config.batch_size_for(classes.dataset))
    device = resolve_device(config.device)
    spec = config.model
    student = load_model(spec.arch, spec.pretrained, init_seed=spec.init_seed, device=device)
    teacher, cache = _teacher_inputs(config, params, student, [r["id"] for r in rows], prompts, cache_uri, device)
    score, val_images = _alpha_grid_scorer(params, splits_uri, config, device)

    def record(metrics: dict, index: int) -> None:
        step.log_metrics({f"train/{k}": v for k, v in metrics.items()}, index)
        if log_fn is not None:
            log_fn(metrics, index)

    _log_inputs(step, splits_uri, splits_ref, config, classes, shared)
    ckpt = checkpoint_dir or str(_default_checkpoint_dir(out_uri))
    with storage.mirrored_dir(ckpt) as (local_ckpt, save_durably):
        trained = train_candidate(
            student,
            rows,
            prompts,
            params,
            seed=config.seed,
            device=device,
            teacher=teacher,
            cache=cache,
            checkpoint_dir=local_ckpt,
            on_checkpoint=save_durably,
            log_fn=record,
            source=f"{train_uri}: ",
            score_on_validation=score,
            val_images=val_images,
        )
    teacher_kind = "cache" if cache is not None else ("online" if teacher else "none")
    summary = trained.summary(len(rows), len(prompts), device, teacher_kind)
    if not distributed.is_main():
        return summary  # rank 0 writes the model
    summary = _write_model(out_uri, student, trained, summary, trained.meta(student, classes, template, config), step)
    _log_outputs(step, trained, summary)
    if not keep_checkpoint:  # the model is published: its checkpoints have done their job
        storage.remove_dir(ckpt)
    log.info("wrote model %s: %s", out_uri, summary)
    return summary


def _alpha_grid_scorer(params: FitParams, splits_uri: str, config: Config, device: str) -> tuple[Scorer | None, int]:
    """With train.alpha_grid: (validation top-1 of a model, validation images), the split read once for every
    alpha, and checked before hours of training (the grid needs validation images)."""
    if grid_fit_params(params) is params:
        return None, 0
    rows, prompts = read_val_split(splits_uri, config)
    require_validation(splits_uri, "choose train.alpha_grid on", "leave train.alpha_grid empty", rows=len(rows))
    return scorer(rows, prompts, config, device, source=f"{splits_uri}/val: "), len(rows)


def _write_model(
    out_uri: str, student: LoadedModel, trained: Trained, summary: TrainSummary, meta: ModelMeta, step: runs.StepRun
) -> TrainSummary:
    """The model folder (weights, clipcite.json, the method's files, curves, the train summary with the folder's
    sizes), staged and published at once; the curves and summary also go on the step's run."""
    with storage.staged_dir(out_uri) as tmp:
        save_model(student, trained.result.state_dict, tmp, meta)
        for name, body in trained.result.files.items():
            (tmp / name).write_bytes(body)
        summary = dataclasses.replace(summary, **_sizes(tmp, trained.result))
        (tmp / CURVES_FILE).write_text("".join(json.dumps(c) + "\n" for c in trained.curves))
        summary.write(tmp)
        step.log_artifacts(tmp / CURVES_FILE)
        step.log_artifacts(tmp / TrainSummary.FILE)
    return summary


def _log_outputs(step: runs.StepRun, trained: Trained, summary: TrainSummary) -> None:
    grid = trained.alpha_grid
    if grid is not None:
        for a, score in zip(grid.alphas, grid.val_top1, strict=True):  # a chart of val top-1 over alpha x 100
            step.log_metrics({"alpha_grid/val_top1": score}, round(a * 100))
        step.log_metrics({"alpha_grid/chosen": grid.chosen})
    logged = ("images_per_second", "seconds", "steps", "epochs", "trainable_parameters", "artefact_bytes")
    step.log_metrics({k: getattr(summary, k) for k in logged})


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
    manifest = SplitsManifest.read(splits_uri)
    data = {"sources_digest": manifest.sources_digest, "splits_uri": splits_ref}
    step.log_params({"config": to_dict(config), "data": data})
    step.log_params({"config": to_dict(shared), "data": data}, parent=True)
    step.log_text(dump_yaml(config), "config.yaml")
    for name in ("train", "val"):
        info = manifest.sets.get(name)
        if info and info.rows:
            step.log_dataset(
                f"{classes.dataset or 'data'}-{name}",
                storage.join(splits_ref, name),
                info.ids_sha256,
                "training" if name == "train" else "validation",
                rows=info.rows,
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
    distributed.add_ranks_argument(parser)
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
    print(json.dumps(dataclasses.asdict(summary), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
