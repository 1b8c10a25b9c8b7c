"""The exit task's step (clipcite/steps/finish_run.py) after a local run: the failed task and its error come from
what ``pipeline.py run`` read on kfp.local's output."""

from __future__ import annotations

import os

from clipcite.tracking import runs as tracking


def test_a_local_run_names_the_task_the_console_saw_fail(tmp_path):
    """kfp.local tells the exit task only "Task clipcite-run failed."; sample-splits keeps no MLflow run, so the task
    and its error come from what `pipeline.py run` read on kfp.local's output (local_run.TaskLog), in the file the
    DAG names to the exit task."""
    import io

    from clipcite.pipeline import local_run
    from clipcite.steps import finish_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.open_pipeline_run(uri, "clipcite", kfp_run_id="kfp-local", run_name="kfp-local")
    client = tracking.connect(uri)
    snap = client.create_run(
        client.get_run(run_id).info.experiment_id,
        run_name="snapshot",
        tags={"mlflow.parentRunId": run_id, "clipcite.step": "snapshot"},
    )
    client.set_terminated(snap.info.run_id, "FINISHED")
    failure = local_run.failure_file(tmp_path)
    environment = dict(os.environ)
    with local_run.captured(tmp_path / "run.log", echo=False, failure_file=failure) as task_log:
        task_log.terminal = io.StringIO()
        task_log.write("    ValueError: table t: 1 image(s) of class 'cat' for 16 shots\n")
        task_log.write("05:01:54.100 - INFO - Task 'sample-splits' finished with status FAILURE\n")
        task_log.write("05:01:55.100 - INFO - Task 'clipcite-run' finished with status FAILURE\n")  # the group
        finish_run.run(uri, "clipcite", "kfp-local", "FAILED", "Task clipcite-run failed.", str(failure))
    assert dict(os.environ) == environment  # handed over as data, not through this process's environment
    tags = client.get_run(run_id).data.tags
    assert tags["clipcite.failed_step"] == "sample-splits"
    assert tags["clipcite.error"].startswith("ValueError: table t: 1 image(s) of class 'cat' for 16 shots")
