"""Step 0, snapshot: check the data sources and MLflow, fingerprint the data, open the pipeline's MLflow run.

It runs first and is never cached, so everything that can be wrong about the environment (a missing bucket, wrong
S3 credentials, an unreachable MLflow server) fails the run here, before any GPU time is spent.
"""

from __future__ import annotations

import json
import logging
import sys

from clipcite import storage, tracking
from clipcite.data.folder import source_snapshot
from clipcite.data.table import sources_digest
from clipcite.steps.common import setup_logging

log = logging.getLogger(__name__)


def run(
    data_uri: str,
    eval_data_uris: tuple[str, ...] = (),
    *,
    tracking_uri: str = "",
    experiment_name: str = "clipcite",
    kfp_run_id: str = "",
    run_name: str = "",
    model_identity: str = "",
) -> tuple[str, str]:
    """Returns ``(data digest, MLflow run id)``; the run id is "" when tracking is off.

    ``model_identity`` (the base model's, when the caller resolved it) is recorded on the pipeline run.
    """
    uri = tracking.resolve_uri(tracking_uri)  # a missing setting fails before anything else
    sources = []
    for source in (data_uri, *eval_data_uris):
        if storage.is_s3(source):
            storage.check_bucket(source)
        sources.append(source_snapshot(source))
    digest = sources_digest(sources)
    if uri is None:
        log.info("tracking is off (tracking_uri=off)")
        return digest, ""
    run_id = tracking.open_pipeline_run(uri, experiment_name, kfp_run_id=kfp_run_id, run_name=run_name)
    with tracking.step_run(uri, run_id, "snapshot", system_metrics=False) as step:
        params = {"data_uri": data_uri, "eval_data_uris": list(eval_data_uris), "data_digest": digest}
        if model_identity:
            params["base_model_identity"] = model_identity
        step.log_params(params, parent=True)
        step.log_params({"code_version": tracking.code_version()}, parent=True)
        step.log_text(json.dumps(sources, indent=2), "snapshot.json")  # every shard or image, for reproducibility
    return digest, run_id


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Fingerprint the data and open the pipeline's MLflow run.")
    parser.add_argument("--data", required=True)
    parser.add_argument("--eval-data", action="append", default=[])
    parser.add_argument("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI; 'off' disables")
    parser.add_argument("--experiment", default="clipcite")
    args = parser.parse_args(argv)
    setup_logging()
    digest, run_id = run(
        args.data, tuple(args.eval_data), tracking_uri=args.tracking_uri, experiment_name=args.experiment
    )
    print(json.dumps({"digest": digest, "mlflow_run_id": run_id}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
