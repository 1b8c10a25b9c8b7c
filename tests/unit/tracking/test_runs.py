"""Tracking settings and failures: no URI, MLflow unreachable (the pipeline fails before training), tracking off,
a local sqlite store, and the pyfunc classifier's input handling."""

import hashlib
import json
import os
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from clipcite.steps import snapshot
from clipcite.tracking import runs
from clipcite.tracking import runs as tracking
from tests.conftest import tiny_config
from tests.support.servers import dead_url

ROOT = Path(__file__).resolve().parents[3]

from clipcite.pipeline import cli  # noqa: E402


def test_tracking_uri_from_the_argument_else_the_environment_and_off_disables(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(runs.TrackingError, match="set MLFLOW_TRACKING_URI or the pipeline parameter"):
        runs.resolve_uri("")
    assert runs.resolve_uri("off") is None and runs.resolve_uri("OFF") is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert runs.resolve_uri("") == "http://mlflow:5000"
    assert runs.resolve_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_unreachable_mlflow_fails_the_pipeline_at_its_first_step(tmp_path, capfd):
    from clipcite.toyworld.generate import write_world

    data = tmp_path / "world"
    write_world(str(data), seed=1, counts={"train": 2, "val": 1, "test": 1}, domains=("photo",))
    with dead_url() as dead:
        params = {"data_uri": str(data), "shots": 2, "tracking_uri": dead, "overrides": {"train.epochs": 1}}
        with pytest.raises(RuntimeError, match="snapshot"):
            cli.run_local(params, tmp_path / "run")
    output = capfd.readouterr()
    assert f"MLflow tracking server {dead} is unreachable" in output.out + output.err
    assert not list((tmp_path / "run" / "root").glob("*/finetune"))  # nothing trained


def test_snapshot_with_tracking_off_opens_no_run_and_digests_the_shards_and_class_list(tmp_path, table):
    found = snapshot.run(str(table), tracking_uri="off")
    digest, run_id = found.digest, found.mlflow_run_id
    # The recipe written out: each shard's name, size and modification time, then classes.json; one digest per
    # source, and a digest over the sources' digests.
    table_digest = hashlib.sha256()
    for shard in sorted(table.glob("part-*.parquet")):
        facts = {"name": shard.name, "size": shard.stat().st_size, "mtime_ns": shard.stat().st_mtime_ns}
        table_digest.update(json.dumps(facts, sort_keys=True).encode())
    table_digest.update((table / "classes.json").read_bytes())
    assert digest == hashlib.sha256(table_digest.hexdigest().encode()).hexdigest() and run_id == ""


def test_snapshot_opens_one_run_per_kfp_run_in_a_local_store(tmp_path, table, monkeypatch):
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = snapshot.run(str(table), tracking_uri=uri, experiment_name="t", kfp_run_id="kfp-1").mlflow_run_id
    retried = snapshot.run(str(table), tracking_uri=uri, experiment_name="t", kfp_run_id="kfp-1").mlflow_run_id
    other = snapshot.run(str(table), tracking_uri=uri, experiment_name="t", kfp_run_id="kfp-2").mlflow_run_id
    assert first == retried != other  # a retried first step finds its run
    client = MlflowClient(uri)
    run = client.get_run(first)
    assert run.data.params["data_digest"] and run.data.tags[runs.KFP_RUN_TAG] == "kfp-1"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()  # beside the database
    monkeypatch.setenv("MLFLOW_RUN_ID", first)  # KFP's MLflow integration injects its own run: linked, never taken
    injected = snapshot.run(str(table), tracking_uri=uri, kfp_run_id="kfp-3").mlflow_run_id
    assert injected != first and client.get_run(injected).data.tags[runs.KFP_MLFLOW_RUN_TAG] == first


def test_snapshot_identifies_the_base_model_and_hands_its_run_on_as_a_file(tmp_path, table, monkeypatch):
    """What pipeline.py passes on: the model identity (cache-teacher's cache key) and the run id in its own small
    artifact; the run id appears nowhere else (not in the saved model)."""
    from clipcite.steps.artifact_io import read_mlflow_run

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_file = str(tmp_path / "mlflow_run")
    found = snapshot.run(str(table), config=tiny_config(), tracking_uri=uri, kfp_run_id="k", run_uri=run_file)
    assert found.model_identity == "random:clipcite-tiny:0" and found.mlflow_run_id
    assert read_mlflow_run(run_file) == found.mlflow_run_id
    params = MlflowClient(uri).get_run(found.mlflow_run_id).data.params
    assert params["base_model_identity"] == found.model_identity and params["data_digest"] == found.digest
    off = snapshot.run(str(table), tracking_uri="off", run_uri=run_file)
    assert read_mlflow_run(run_file) == "" and off.model_identity == ""  # no model given: not identified
    Path(run_file).write_text("[1, 2]")
    with pytest.raises(ValueError, match=f"{run_file}: not an MLflow run reference"):
        read_mlflow_run(run_file)
    Path(run_file).write_text('{"mlflow_run_id": null}')
    with pytest.raises(ValueError, match=f"{run_file}: mlflow_run_id is None, not a string"):
        read_mlflow_run(run_file)


def test_tracking_leaves_mlflows_process_wide_state_alone(tmp_path):
    """connect, a step's run and the one fluent block (what ``mlflow.pyfunc.log_model`` needs) change no process-wide
    MLflow setting: kfp.local's step subprocesses inherit the ``MLFLOW_*`` variables, and later code its URIs."""

    def state():
        env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
        return mlflow.get_tracking_uri(), mlflow.get_registry_uri(), env, mlflow.active_run()

    before = state()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs.connect(uri)
    assert state() == before
    parent = runs.open_pipeline_run(uri, "clipcite", kfp_run_id="k", run_name="k")
    with runs.step_run(uri, parent, "register") as step:
        assert state() == before
        with step.fluent():
            assert mlflow.get_tracking_uri() == uri and mlflow.active_run().info.run_id == step.run_id
        assert state() == before
        assert step.client.get_run(step.run_id).info.status == "RUNNING"  # the block did not end the step's run
    assert state() == before
    assert MlflowClient(uri).get_run(step.run_id).info.status == "FINISHED"


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


def test_an_unreachable_tracking_server_error_is_not_cut_mid_word():
    assert tracking.shorten("Failed to establish a new connection", 26) == "Failed to establish a…"
    assert tracking.shorten("short", 26) == "short"
    with pytest.raises(tracking.TrackingError) as raised:
        tracking.connect("http://127.0.0.1:9")  # loopback port 9: nothing listens
    message = str(raised.value)
    assert "Failed to establish a new)" not in message and "Connection refused" in message, message


def test_an_unrecorded_failure_is_placed_after_the_step_runs_that_exist():
    where = runs.unrecorded_failure
    assert where(["snapshot"]) == "sample-splits or cache-teacher"
    after = "evaluate or register"
    assert where(["snapshot", "finetune"]) == where(["snapshot", "finetune", "evaluate-photo"]) == after
    trained = ["snapshot", "finetune-cite", "finetune-linear_probe"]  # several methods
    assert where(trained) == "validate-cite or validate-linear_probe or select"
    assert where([*trained, "validate-cite"]) == "validate-linear_probe or select"
    scored = [*trained, "validate-cite", "validate-linear_probe"]
    assert where(scored) == "select"
    assert where([*scored, "select"]) == where([*scored, "select", "evaluate-photo"]) == after
