"""What the steps receive from a Kubeflow Pipelines backend, as the backend shapes it (kfp.local shapes some of it
differently, so code follows the backend and the tests feed it backend-shaped inputs).

Torch- and MLflow-free: the CPU steps, ``pipeline.py`` and the tests import it cheaply.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# The oldest KFP backend the compiled pipeline is supported on, and why (docs/cluster.md, docs/kfp-backend.md):
#   2.5.0  resolves dsl.PIPELINE_JOB_ID_PLACEHOLDER / PIPELINE_JOB_NAME_PLACEHOLDER (older ones pass them literally);
#   2.16.0 finds a named ParallelFor's outputs for a dsl.Collected consumer (kubeflow/pipelines #13239, #12808);
#   2.17.0 ends an ExitHandler that wraps a ParallelFor instead of leaving it RUNNING (#13321).
MIN_BACKEND_VERSION = "2.17.0"

# The exit task's ``status.state``. The backend's driver (backend/src/v2/driver/resolve.go, release-2.17, the
# TaskFinalStatus case) sends ML Metadata's execution state of the exit handler's DAG:
# ``producer.GetExecution().GetLastKnownState().String()``; kfp.local sends SUCCEEDED / FAILED (the SDK's words).
SUCCEEDED_STATES = frozenset({"COMPLETE", "CACHED", "SUCCEEDED"})
FAILED_STATES = frozenset({"FAILED", "CANCELED", "CANCELLED", "NEW", "RUNNING", "UNKNOWN"})


def write_local_failure(path: Path, task: str, error: str) -> None:
    """kfp.local's final status names only the exit handler's group ("Task clipcite-run failed."), not the task that
    failed; ``pipeline.py run`` reads the failed task and its last exception line from kfp.local's output
    (local_run.TaskLog) and writes them here, to a file the DAG names to the exit task (finish_run's
    ``local_failure``), which kfp.local starts later."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"task": task, "error": error}))


def read_local_failure(path: str) -> tuple[str, str]:
    """(task, error) that :func:`write_local_failure` wrote at ``path``; ("", "") for no path or no file (no task
    failed, or a cluster run)."""
    if not path or not Path(path).is_file():
        return "", ""
    found = json.loads(Path(path).read_text())
    return str(found.get("task", "")), str(found.get("error", ""))


def run_succeeded(state: str) -> bool:
    """Whether the DAG an exit handler wraps succeeded, from ``PipelineTaskFinalStatus.state`` in either spelling.

    ``RUNNING`` (or ``NEW``) means the backend closed the DAG before its tasks ended: backends before 2.17.0 do that
    to an ExitHandler around a ParallelFor; it is a failure, with a warning naming the minimum version."""
    word = (state or "").strip().upper()
    if word in SUCCEEDED_STATES:
        return True
    if word in ("RUNNING", "NEW"):
        log.warning(
            "the KFP backend reported the pipeline's DAG as %s at its exit handler: backends before %s do that to "
            "an ExitHandler around a ParallelFor; closing the MLflow run FAILED",
            word,
            MIN_BACKEND_VERSION,
        )
    elif word not in FAILED_STATES:
        log.warning("unknown KFP final state %r: taken as a failure", state)
    return False


def check_run_id(kfp_run_id: str, *, what: str = "kfp_run_id") -> str:
    """``kfp_run_id`` as the backend resolved ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``; a literal placeholder (a backend
    before 2.5.0 passes ``{{$.pipeline_job_uuid}}`` through, backend/src/v2/driver/resolve.go resolves it from
    2.5.0) is refused: every run would share one checkpoint folder and one MLflow run."""
    if "{{" in kfp_run_id or "}}" in kfp_run_id:
        raise ValueError(
            f"{what} is the unresolved placeholder {kfp_run_id!r}: this Kubeflow Pipelines backend does not resolve "
            f"dsl.PIPELINE_JOB_ID_PLACEHOLDER (backends from 2.5.0 do); clipcite needs KFP {MIN_BACKEND_VERSION} "
            "or newer, otherwise every run would share one checkpoint folder and one MLflow run"
        )
    return kfp_run_id
