"""The pipeline's exit step: close this run's MLflow run, FINISHED or FAILED with the failed step named.

A ``dsl.ExitHandler`` runs it whether the DAG succeeded or not, so a run that fails midway (a diverging finetune, a
preempted pod that exhausted its retries) is never left RUNNING in MLflow.
"""

from __future__ import annotations

import logging

from clipcite import tracking

log = logging.getLogger(__name__)


def run(tracking_uri: str, experiment_name: str, kfp_run_id: str, state: str, error: str = "") -> dict:
    """``state`` is KFP's final state of the DAG (``SUCCEEDED``, ``FAILED``, ``CANCELLED``...)."""
    uri = tracking.resolve_uri(tracking_uri)
    if uri is None:
        return {"run_id": "", "status": "tracking off"}
    result = tracking.close_pipeline_run(
        uri, experiment_name, kfp_run_id, succeeded=state.upper() == "SUCCEEDED", error=error
    )
    log.info("closed MLflow run %s: %s", result["run_id"] or "(none)", result["status"])
    return result
