"""Component finish-run: the exit handler's task; closes the MLflow run FINISHED or FAILED (CPU; never cached)."""

from kfp import dsl

from clipcite.pipeline.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def finish_run(
    tracking_uri: str,
    experiment_name: str,
    kfp_run_id: str,
    status: dsl.PipelineTaskFinalStatus,
    local_failure: str = "",
):
    """``local_failure``: where a local run (``pipeline.py run``) writes the task it saw fail ("" on a cluster)."""
    from clipcite.steps.finish_run import run

    run(tracking_uri, experiment_name, kfp_run_id, status.state, status.error_message or "", local_failure)
