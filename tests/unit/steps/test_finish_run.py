"""The exit task's step (clipcite/steps/finish_run.py) after a local run: the failed task and its error come from
what ``pipeline.py run`` read on kfp.local's output."""

from __future__ import annotations

import os

from clipcite.tracking import runs as tracking


def test_a_local_run_names_the_task_the_console_saw_fail(tmp_path, monkeypatch):
    """kfp.local tells the exit task only "Task clipcite-run failed."; sample-splits keeps no MLflow run, so the task
    and its error come from what `pipeline.py run` read on kfp.local's output (local_run.TaskLog)."""
    import io

    from clipcite.pipeline import local_run
    from clipcite.steps import finish_run, kfp_backend

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.open_pipeline_run(uri, "clipcite", kfp_run_id="kfp-local", run_name="kfp-local")
    client = tracking.connect(uri)
    snap = client.create_run(
        client.get_run(run_id).info.experiment_id,
        run_name="snapshot",
        tags={"mlflow.parentRunId": run_id, "clipcite.step": "snapshot"},
    )
    client.set_terminated(snap.info.run_id, "FINISHED")
    with local_run.captured(tmp_path / "run.log", echo=False) as task_log:
        task_log.terminal = io.StringIO()
        task_log.write("    ValueError: table t: 1 image(s) of class 'cat' for 16 shots\n")
        task_log.write("05:01:54.100 - INFO - Task 'sample-splits' finished with status FAILURE\n")
        assert os.environ[kfp_backend.LOCAL_FAILED_TASK] == "sample-splits"
        finish_run.run(uri, "clipcite", "kfp-local", "FAILED", "Task clipcite-run failed.")
    assert kfp_backend.LOCAL_FAILED_TASK not in os.environ  # put back after the run
    tags = client.get_run(run_id).data.tags
    assert tags["clipcite.failed_step"] == "sample-splits"
    assert tags["clipcite.error"].startswith("ValueError: table t: 1 image(s) of class 'cat' for 16 shots")
