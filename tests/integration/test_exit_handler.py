"""Failed runs are closed: the pipeline's exit handler ends its MLflow run FINISHED, or FAILED with the failed step
and its error named; step runs left RUNNING by a killed pod are closed too (issue 14, item 3)."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[2]

from clipcite.pipeline import cli  # noqa: E402
from clipcite.toyworld.generate import write_world  # noqa: E402
from clipcite.tracking import runs as tracking  # noqa: E402

pytestmark = pytest.mark.slow  # see pyproject.toml: `make test-fast` leaves these out


def _runs(uri: str) -> dict[str, object]:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("clipcite")
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def test_close_pipeline_run_names_failed_and_killed_steps(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.connect(uri)
    for kfp_run, outcome in (("kfp-ok", True), ("kfp-bad", False)):
        run_id = tracking.open_pipeline_run(uri, "clipcite", kfp_run_id=kfp_run, run_name=kfp_run)
        experiment = client.get_run(run_id).info.experiment_id
        for step, status in (("snapshot", "FINISHED"), ("finetune", "RUNNING")):
            child = client.create_run(
                experiment, run_name=f"{kfp_run}-{step}", tags={"mlflow.parentRunId": run_id, "clipcite.step": step}
            )
            if status != "RUNNING":
                client.set_terminated(child.info.run_id, status)
        result = tracking.close_pipeline_run(uri, "clipcite", kfp_run, succeeded=outcome, error="Task x failed.")
        assert result["failed_steps"] == ["finetune"]  # the pod died with its run RUNNING
    runs = _runs(uri)
    assert runs["kfp-ok"].info.status == "FINISHED" and runs["kfp-bad"].info.status == "FAILED"
    assert runs["kfp-bad"].data.tags["clipcite.failed_step"] == "finetune"
    # No step recorded its error: KFP's words, and where the step's own words are.
    assert (
        runs["kfp-bad"].data.tags["clipcite.error"]
        == "Task x failed. (see the logs of task finetune in KFP run kfp-bad)"
    )
    assert runs["kfp-bad-finetune"].info.status == "FAILED"
    assert tracking.close_pipeline_run(uri, "clipcite", "no-such-kfp-run", succeeded=False)["status"] == "none"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "table"
    write_world(str(out), seed=1, counts={"train": 3, "val": 1, "test": 2}, domains=("photo",))
    return out


def test_pipeline_failing_at_finetune_leaves_its_mlflow_run_failed(world, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = {
        "data_uri": str(world),
        "shots": 2,
        "overrides": {"train.epochs": 2, "train.lr": 1e12},  # diverges at step 2: the non-finite guard stops it
        "tracking_uri": uri,
    }
    with pytest.raises(RuntimeError, match="task 'finetune' failed: NonFiniteError"):
        cli.run_local(params, tmp_path / "run", quiet=True)
    runs = _runs(uri)
    (parent,) = [r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags]  # named by its content
    assert parent.info.status == "FAILED"
    assert parent.data.tags["clipcite.failed_step"] == "finetune"
    assert parent.data.tags["clipcite.error"].startswith("NonFiniteError: ")
    assert "step 2 (epoch 1/2)" in parent.data.tags["clipcite.error"]
    assert runs["finetune"].info.status == "FAILED" and runs["snapshot"].info.status == "FINISHED"
    assert "register" not in runs


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


def test_an_unreachable_tracking_server_error_is_not_cut_mid_word():
    assert tracking.shorten("Failed to establish a new connection", 26) == "Failed to establish a…"
    assert tracking.shorten("short", 26) == "short"
    with pytest.raises(tracking.TrackingError) as raised:
        tracking.connect("http://127.0.0.1:9")  # loopback port 9: nothing listens
    message = str(raised.value)
    assert "Failed to establish a new)" not in message and "Connection refused" in message, message
