"""The pipeline's exit step: close this run's MLflow run, FINISHED or FAILED with the failed step named.

A ``dsl.ExitHandler`` runs it whether the DAG succeeded or not, so a run that fails midway (a diverging finetune, a
preempted pod that exhausted its retries) is never left RUNNING in MLflow.
"""

from __future__ import annotations

import logging

from clipcite.steps import kfp_backend
from clipcite.tracking import runs

log = logging.getLogger(__name__)


def run(
    tracking_uri: str, experiment_name: str, kfp_run_id: str, state: str, error: str = "", local_failure: str = ""
) -> dict:
    """``state`` is the final state of the DAG the exit handler wraps, in the backend's words (``COMPLETE``,
    ``FAILED``, ``CANCELED``: ML Metadata's) or kfp.local's (``SUCCEEDED``, ``FAILED``); ``error`` is what KFP said
    about it (the backend always sends none). ``local_failure``: the file where ``pipeline.py run`` wrote the task
    it saw fail and that task's error (:func:`kfp_backend.write_local_failure`); "" on a cluster."""
    uri = runs.resolve_uri(tracking_uri)
    if uri is None:
        return {"run_id": "", "status": "tracking off"}
    kfp_backend.check_run_id(kfp_run_id)
    failed_task, local_error = kfp_backend.read_local_failure(local_failure)
    error = local_error or error
    result = runs.close_pipeline_run(
        uri,
        experiment_name,
        kfp_run_id,
        succeeded=kfp_backend.run_succeeded(state),
        error=error,
        failed_task=failed_task,
    )
    log.info("closed MLflow run %s: %s", result["run_id"] or "(none)", result["status"])
    return result
