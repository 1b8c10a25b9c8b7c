"""Step 0, snapshot: check the data sources and MLflow, fingerprint the data, open the pipeline's MLflow run.

It runs first and is never cached, so everything that can be wrong about the environment (a missing bucket, wrong
S3 credentials, an unreachable MLflow server) fails the run here, before any GPU time is spent. The run it opens is
named and described by what is known now (method, base model, data: :mod:`clipcite.tracking.run_card`), so runs of two
models or datasets look different in the MLflow UI.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

from clipcite import storage
from clipcite.config import Config, ModelConfig
from clipcite.data.folder import is_table, read_settings, source_snapshot
from clipcite.data.table import read_classes, sources_digest
from clipcite.logs import setup_logging
from clipcite.model.identity import checkpoint_identity
from clipcite.steps import kfp_backend
from clipcite.steps.artifact_io import write_mlflow_run
from clipcite.steps.command_line import base_parser, config_from
from clipcite.steps.run_config import run_config
from clipcite.tracking import default_uri, run_card, runs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """What the later steps need from the snapshot: the data's digest (keys sample-splits' cache), the base
    model's identity (keys cache-teacher's) and the pipeline's MLflow run ("" with tracking off)."""

    digest: str
    model_identity: str
    mlflow_run_id: str


def run(
    data_uri: str,
    eval_data_uris: tuple[str, ...] = (),
    *,
    config: Config | None = None,
    preset: str = "",
    overrides: dict | None = None,
    tracking_uri: str = "",
    experiment_name: str = "clipcite",
    kfp_run_id: str = "",
    run_name: str = "",
    run_uri: str = "",
) -> Snapshot:
    """Check every source and the tracking server, fingerprint the data, open the pipeline's MLflow run.

    ``config`` (the run's resolved config, from ``preset`` and ``overrides``) names the base model, identified here
    (a checkpoint file's SHA-256, or its open_clip tag) and recorded on the run with the method; ``run_name`` is
    KFP's name for the run (kept as a tag: the MLflow run is named by its content). ``run_uri`` (a file) receives
    the run id for the steps that log (:func:`write_mlflow_run`)."""
    uri = runs.resolve_uri(tracking_uri)  # a missing setting fails before anything else
    identity = model_identity(config.model) if config is not None else ""
    sources = []
    for source in (data_uri, *eval_data_uris):
        if storage.is_s3(source):
            storage.check_bucket(source)
        sources.append(source_snapshot(source))
    digest = sources_digest(sources)
    run_id = ""
    if uri is None:
        log.info("tracking is off (tracking_uri=off)")
    else:
        facts = _run_facts(data_uri, eval_data_uris, digest, config, identity, preset, overrides or {})
        facts.update(kfp_run_id=kfp_run_id, kfp_run_name=run_name, code_version=runs.code_version())
        model = facts["model"]
        name = run_card.run_name(
            method=facts["method"], arch=model["arch"], pretrained=model["pretrained"], data=facts["data_name"]
        )
        tags = {"mlflow.note.content": run_card.run_description(**facts), "clipcite.kfp_run_name": run_name}
        run_id = runs.open_pipeline_run(uri, experiment_name, kfp_run_id=kfp_run_id, run_name=name, tags=tags)
        with runs.step_run(uri, run_id, "snapshot", system_metrics=False) as step:
            params = {"data_uri": data_uri, "eval_data_uris": list(eval_data_uris), "data_digest": digest}
            if identity:
                params["base_model_identity"] = identity
            step.log_params(params, parent=True)
            step.log_params({"code_version": runs.code_version()}, parent=True)
            step.log_text(json.dumps(sources, indent=2), "snapshot.json")  # every shard or image, for reproducibility
    if run_uri:
        write_mlflow_run(run_uri, run_id)
    return Snapshot(digest, identity, run_id)


def _run_facts(
    data_uri: str,
    eval_data_uris: tuple[str, ...],
    digest: str,
    config: Config | None,
    identity: str,
    preset: str,
    overrides: dict,
) -> dict:
    """What the run's name and description say (:func:`clipcite.tracking.run_card.run_description`'s arguments)."""
    model = {"arch": "", "pretrained": "", "identity": identity}
    if config is not None:
        model.update(arch=config.model.arch, pretrained=config.model.pretrained)
    return {
        "data_name": data_name(data_uri),
        "data_uri": data_uri,
        "eval_data_uris": list(eval_data_uris),
        "data_digest": digest,
        "model": model,
        "method": config.train.method if config is not None else "",
        "shots": config.splits.shots if config is not None else None,
        "seed": config.seed if config is not None else None,
        "preset": preset,
        "overrides": overrides,
    }


def data_name(uri: str) -> str:
    """The data's short name: a table's dataset (``classes.json``), a folder's ``dataset`` setting, else the
    last part of its path (``s3://datasets/pets/incoming/`` -> ``incoming``)."""
    try:
        named = read_classes(uri).dataset if is_table(uri) else read_settings(uri).get("dataset", "")
    except (OSError, ValueError):  # the snapshot above read it; a name is not worth failing the run for
        named = ""
    return named or PurePosixPath(uri.rstrip("/").split("://", 1)[-1]).name


def model_identity(model: ModelConfig) -> str:
    """The base model's identity as cache-teacher will report it (without torch: :mod:`clipcite.model.identity`)."""
    return checkpoint_identity(model.arch, model.pretrained, init_seed=model.init_seed)


def for_pipeline(
    data_uri: str,
    eval_data_uris: tuple[str, ...],
    *,
    preset: str,
    overrides: dict,
    tracking_uri: str,
    experiment_name: str,
    kfp_run_id: str,
    run_name: str,
    run_uri: str,
    **parameters: object,
) -> Snapshot:
    """The pipeline's snapshot: its config (base model, method, shots, seed) comes from the run's parameters (the
    named ``parameters`` of :data:`~clipcite.steps.run_config.CONFIG_PARAMETERS`), resolved as sample-splits does;
    a KFP run id the backend left unresolved is refused before any run is opened."""
    kfp_backend.check_run_id(kfp_run_id)
    config = run_config(preset, overrides, **parameters)
    return run(
        data_uri,
        eval_data_uris,
        config=config,
        preset=preset,
        overrides=overrides,
        tracking_uri=tracking_uri,
        experiment_name=experiment_name,
        kfp_run_id=kfp_run_id,
        run_name=run_name,
        run_uri=run_uri,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        "snapshot", "Fingerprint the data and open the pipeline's MLflow run (with --config: identify the model)."
    )
    parser.add_argument("--data", required=True, help="image table folder, s3:// prefix or folder of images")
    parser.add_argument("--eval-data", action="append", default=[], help="more tables to evaluate on (repeatable)")
    parser.add_argument("--tracking-uri", default="", help=f"{default_uri.HELP}; 'off' disables tracking")
    parser.add_argument("--experiment", default="clipcite", help="MLflow experiment of the pipeline's run")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    config = config_from(args) if args.config or args.overrides else None
    found = run(
        args.data,
        tuple(args.eval_data),
        config=config,
        preset=args.config or "",
        tracking_uri=default_uri.default_tracking_uri(args.tracking_uri),
        experiment_name=args.experiment,
    )
    print(json.dumps(asdict(found)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
