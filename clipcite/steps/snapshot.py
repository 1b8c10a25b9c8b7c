"""Step 0, snapshot: check the data sources and MLflow, fingerprint the data, open the pipeline's MLflow run.

It runs first and is never cached, so everything that can be wrong about the environment (a missing bucket, wrong
S3 credentials, an unreachable MLflow server) fails the run here, before any GPU time is spent.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass

from clipcite import kfp_backend, storage, tracking, tracking_uri
from clipcite.config import ModelConfig
from clipcite.data.folder import source_snapshot
from clipcite.data.table import sources_digest
from clipcite.model_identity import checkpoint_identity
from clipcite.steps.common import base_parser, config_from, setup_logging, write_mlflow_run
from clipcite.steps.run_config import run_config

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
    model: ModelConfig | None = None,
    tracking_uri: str = "",
    experiment_name: str = "clipcite",
    kfp_run_id: str = "",
    run_name: str = "",
    run_uri: str = "",
) -> Snapshot:
    """Check every source and the tracking server, fingerprint the data, open the pipeline's MLflow run.

    ``model`` (the run's base model) is identified here (a checkpoint file's SHA-256, or its open_clip tag) and
    recorded on the run; ``run_uri`` (a file) receives the run id for the steps that log (:func:`write_mlflow_run`).
    """
    uri = tracking.resolve_uri(tracking_uri)  # a missing setting fails before anything else
    identity = model_identity(model) if model is not None else ""
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
        run_id = tracking.open_pipeline_run(uri, experiment_name, kfp_run_id=kfp_run_id, run_name=run_name)
        with tracking.step_run(uri, run_id, "snapshot", system_metrics=False) as step:
            params = {"data_uri": data_uri, "eval_data_uris": list(eval_data_uris), "data_digest": digest}
            if identity:
                params["base_model_identity"] = identity
            step.log_params(params, parent=True)
            step.log_params({"code_version": tracking.code_version()}, parent=True)
            step.log_text(json.dumps(sources, indent=2), "snapshot.json")  # every shard or image, for reproducibility
    if run_uri:
        write_mlflow_run(run_uri, run_id)
    return Snapshot(digest, identity, run_id)


def model_identity(model: ModelConfig) -> str:
    """The base model's identity as cache-teacher will report it (without torch: :mod:`clipcite.model_identity`)."""
    return checkpoint_identity(model.arch, model.pretrained, init_seed=model.init_seed)


def for_pipeline(
    data_uri: str,
    eval_data_uris: tuple[str, ...],
    *,
    preset: str,
    overrides: dict,
    arch: str,
    pretrained: str,
    tracking_uri: str,
    experiment_name: str,
    kfp_run_id: str,
    run_name: str,
    run_uri: str,
) -> Snapshot:
    """The pipeline's snapshot: its base model comes from the run's parameters, resolved as sample-splits does; a
    KFP run id the backend left unresolved is refused before any run is opened."""
    kfp_backend.check_run_id(kfp_run_id)
    model = run_config(preset, overrides, arch=arch, pretrained=pretrained).model
    return run(
        data_uri,
        eval_data_uris,
        model=model,
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
    parser.add_argument("--tracking-uri", default="", help=f"{tracking_uri.HELP}; 'off' disables tracking")
    parser.add_argument("--experiment", default="clipcite", help="MLflow experiment of the pipeline's run")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    model = config_from(args).model if args.config or args.overrides else None
    uri = tracking_uri.default_tracking_uri(args.tracking_uri)
    found = run(args.data, tuple(args.eval_data), model=model, tracking_uri=uri, experiment_name=args.experiment)
    print(json.dumps(asdict(found)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
