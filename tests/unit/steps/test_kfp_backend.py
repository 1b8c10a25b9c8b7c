"""The pipeline's steps fed what a Kubeflow Pipelines backend (release-2.17) feeds them, where kfp.local differs:
the exit task's status words, ``.path`` vs ``.uri``, unresolved placeholders, the loops' retry
policy, KFP's MLflow integration and the API server's upload checks. Each test names the backend file it follows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from kfp import dsl
from kfp.dsl import executor
from kfp.dsl.types import artifact_types

from clipcite.pipeline import dag
from clipcite.pipeline import settings as pipeline_settings
from clipcite.pipeline.components.evaluate import evaluate
from clipcite.pipeline.components.finetune import finetune
from clipcite.pipeline.components.finish_run import finish_run
from clipcite.pipeline.components.register import register
from clipcite.steps import cache_teacher, kfp_backend, retry, sample_splits, snapshot
from clipcite.steps.artifact_io import write_config, write_mlflow_run
from clipcite.tracking import runs
from tests.conftest import tiny_config
from tests.support.kfp_upload_check import check_spec, installed_protos

ROOT = Path(__file__).resolve().parents[3]

OLDEST_PROTOS = ROOT / ".venv-kfp-oldest"  # kfp-pipeline-spec and kfp-kubernetes of MIN_BACKEND_VERSION (make setup)


# ------------------------------------------------------------------------------------- 1. the exit task's status


def _backend_status(state: str) -> dict:
    """``PipelineTaskFinalStatus`` as backend/src/v2/driver/resolve.go (release-2.17, the TaskFinalStatus case)
    builds it: ML Metadata's execution state of the exit handler's DAG, that DAG's task name, and an empty error
    (``Error: &status.Status{}``, a TODO there), marshalled with protojson (camelCase names)."""
    return {
        "state": state,
        "pipelineTaskName": "exit-handler-1",
        "pipelineJobResourceName": "clipcite-abc12",
        "error": {},
    }


def _run_exit_task(uri: str, kfp_run_id: str, status: dict, tmp_path: Path) -> None:
    """The finish-run component as the backend's launcher runs it: kfp's executor with an executor input whose
    ``status`` parameter is the struct above."""
    executor_input = {
        "inputs": {
            "parameterValues": {
                "tracking_uri": uri,
                "experiment_name": "clipcite",
                "kfp_run_id": kfp_run_id,
                "status": status,
            }
        },
        "outputs": {"outputFile": str(tmp_path / "executor_output.json")},
    }
    executor.Executor(executor_input, finish_run.python_func).execute()


def _pipeline_run(uri: str, kfp_run_id: str, steps: dict[str, str]) -> str:
    run_id = runs.open_pipeline_run(uri, "clipcite", kfp_run_id=kfp_run_id, run_name=kfp_run_id)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_run(run_id).info.experiment_id
    for step, status in steps.items():
        child = client.create_run(experiment, run_name=step, tags={"mlflow.parentRunId": run_id, "clipcite.step": step})
        if status != "RUNNING":
            client.set_terminated(child.info.run_id, status)
    return run_id


@pytest.mark.parametrize("state", ["COMPLETE", "SUCCEEDED", "CACHED"])
def test_a_successful_run_is_closed_finished_whichever_spelling_the_runner_sends(tmp_path, state):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = {"snapshot": "FINISHED", "finetune": "FINISHED", "evaluate-photo": "FINISHED", "register": "FINISHED"}
    run_id = _pipeline_run(uri, "kfp-1", done)
    _run_exit_task(uri, "kfp-1", _backend_status(state), tmp_path)
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "clipcite.failed_step" not in run.data.tags


def test_a_failed_run_names_its_step_and_where_its_error_is_when_the_backend_sends_no_text(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    # A step whose run recorded its exception: named, with its own words.
    failed = _pipeline_run(uri, "kfp-2", {"snapshot": "FINISHED", "finetune": "FAILED"})
    finetune_run = next(
        r for r in client.search_runs([client.get_run(failed).info.experiment_id]) if r.info.run_name == "finetune"
    )
    client.set_tag(finetune_run.info.run_id, runs.ERROR_TAG, "NonFiniteError: loss is nan at step 2")
    _run_exit_task(uri, "kfp-2", _backend_status("FAILED"), tmp_path)
    run = client.get_run(failed)
    assert run.info.status == "FAILED" and run.data.tags["clipcite.failed_step"] == "finetune"
    assert run.data.tags[runs.ERROR_TAG] == "NonFiniteError: loss is nan at step 2"
    # A cached step (no MLflow run of its own) failed: the suspects are named, and where their logs are.
    early = _pipeline_run(uri, "kfp-3", {"snapshot": "FINISHED"})
    _run_exit_task(uri, "kfp-3", _backend_status("FAILED"), tmp_path)
    run = client.get_run(early)
    assert run.info.status == "FAILED"
    assert run.data.tags["clipcite.failed_step"] == "sample-splits or cache-teacher"
    assert run.data.tags[runs.ERROR_TAG] == (
        "no error text from KFP: see the logs of task sample-splits or cache-teacher in KFP run kfp-3"
    )
    late = _pipeline_run(uri, "kfp-4", {"snapshot": "FINISHED", "finetune": "FINISHED", "evaluate-a": "FINISHED"})
    _run_exit_task(uri, "kfp-4", _backend_status("CANCELED"), tmp_path)
    assert client.get_run(late).data.tags["clipcite.failed_step"] == "evaluate or register"
    # Several methods (finetune-<m>, validate-<m>, select): a failure after training is placed after training.
    trained = {"snapshot": "FINISHED", "finetune-cite": "FINISHED", "finetune-lora": "FINISHED"}
    scoring = _pipeline_run(uri, "kfp-5", {**trained, "validate-cite": "FINISHED"})
    _run_exit_task(uri, "kfp-5", _backend_status("FAILED"), tmp_path)
    assert client.get_run(scoring).data.tags["clipcite.failed_step"] == "validate-lora or select"
    chosen = {**trained, "validate-cite": "FINISHED", "validate-lora": "FINISHED", "select": "FINISHED"}
    selected = _pipeline_run(uri, "kfp-6", chosen)
    _run_exit_task(uri, "kfp-6", _backend_status("FAILED"), tmp_path)
    assert client.get_run(selected).data.tags["clipcite.failed_step"] == "evaluate or register"


def test_final_states_cover_ml_metadatas_words_and_kfp_locals():
    # ML Metadata's Execution.State names (ml_metadata/proto/metadata_store.proto), which resolve.go stringifies.
    assert [kfp_backend.run_succeeded(s) for s in ("COMPLETE", "CACHED", "complete", "SUCCEEDED")] == [True] * 4
    assert not any(kfp_backend.run_succeeded(s) for s in ("FAILED", "CANCELED", "RUNNING", "NEW", "UNKNOWN", "", "?"))


# ------------------------------------------------------------------------------------------ 2. paths vs URIs


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    """Artifacts as the backend hands them to a pod: ``.uri`` is the object's address (``s3://bucket/...``) and
    ``.path`` its local copy under the launcher's mount prefix (``/s3/bucket/...``, kfp/dsl/types/artifact_types.py;
    the launcher, backend/src/v2/component/launcher_v2.go, downloads inputs there and uploads outputs from there).
    The prefix is moved under a temp folder; the shape is the same."""
    root = tmp_path_factory.mktemp("pod")
    patch = pytest.MonkeyPatch()
    patch.setattr(artifact_types, "_S3_LOCAL_MOUNT_PREFIX", f"{root}/s3/")
    yield root
    patch.undo()


def _artifact(kind, key: str):
    found = kind(uri=f"s3://pipeline-root/clipcite/run-1/{key}")
    assert found.path.endswith(f"/s3/pipeline-root/clipcite/run-1/{key}") and found.uri.startswith("s3://")
    Path(found.path).parent.mkdir(parents=True, exist_ok=True)
    return found


def test_steps_read_by_path_and_record_by_uri(pod, table, tmp_path):
    """finetune, evaluate and register read the pod-local ``.path`` and record the ``.uri`` (the registration
    record, the datasets and params in MLflow, metrics.json): a ``/s3/...`` path is gone with the pod."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_config("splits.shots=2", "train.epochs=1", "splits.eval_domains=[photo]", "train.method=ce")
    splits, run_config = _artifact(dsl.Dataset, "sample-splits/splits"), _artifact(dsl.Artifact, "run_config")
    teacher, mlflow_run = _artifact(dsl.Dataset, "cache-teacher/teacher"), _artifact(dsl.Artifact, "mlflow_run")
    sample_splits.run(str(table), splits.path, config)
    write_config(run_config.path, config)
    cache_teacher.run(splits.path, teacher.path, config)
    run_id = snapshot.run(str(table), tracking_uri=uri, kfp_run_id="run-1").mlflow_run_id
    write_mlflow_run(mlflow_run.path, run_id)

    model, curves = _artifact(dsl.Model, "finetune/model"), _artifact(dsl.Metrics, "finetune/curves")
    finetune.python_func(
        splits=splits,
        run_config=run_config,
        teacher=teacher,
        mlflow_run=mlflow_run,
        tracking_uri=uri,
        checkpoint_root="",
        kfp_run_id="run-1",
        model=model,
        curves=curves,
    )
    report, metrics = _artifact(dsl.Artifact, "evaluate/report"), _artifact(dsl.Metrics, "evaluate/metrics")
    evaluate.python_func(
        model=model,
        splits=splits,
        run_config=run_config,
        mlflow_run=mlflow_run,
        domain="photo",
        tracking_uri=uri,
        registered_model_name="",
        baseline_cache="",
        attempts=1,
        report=report,
        metrics=metrics,
    )
    summary, record = _artifact(dsl.Markdown, "register/summary"), _artifact(dsl.Artifact, "register/record")
    register.python_func(
        model=model,
        reports=[report],
        run_config=run_config,
        mlflow_run=mlflow_run,
        registered_model_name="m",
        experiment_name="clipcite",
        tracking_uri="off",
        summary=summary,
        record=record,
    )

    assert json.loads((Path(record.path) / "registration.json").read_text())["model_uri"] == model.uri
    assert json.loads((Path(report.path) / "metrics.json").read_text())["model"] == model.uri
    client = mlflow.MlflowClient(uri)
    steps = {r.info.run_name: r for r in client.search_runs([client.get_run(run_id).info.experiment_id])}
    assert steps["finetune"].data.params["data.splits_uri"] == splits.uri
    sources = [json.loads(d.dataset.source)["uri"] for r in steps.values() for d in r.inputs.dataset_inputs]
    assert {f"{splits.uri}/train", f"{splits.uri}/eval/photo-base", f"{splits.uri}/eval/photo-new"} <= set(sources)
    assert all(source.startswith(f"{splits.uri}/") for source in sources), sources
    recorded = json.dumps([r.data.params for r in steps.values()])
    recorded += (Path(record.path) / "registration.json").read_text()
    assert str(pod) not in recorded  # no pod-local path anywhere


# ------------------------------------------------------------------------------------------- 3. placeholders


def test_an_unresolved_run_id_placeholder_is_refused_naming_the_minimum_backend(table, tmp_path):
    """Backends before 2.5.0 pass ``{{$.pipeline_job_uuid}}`` through (backend/src/v2/driver/resolve.go resolves
    it from then on): every run would share one checkpoint folder and one MLflow run."""
    from clipcite.steps.finetune import checkpoint_uri

    literal = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    assert literal == "{{$.pipeline_job_uuid}}"
    match = f"unresolved placeholder.*KFP {kfp_backend.MIN_BACKEND_VERSION}"
    with pytest.raises(ValueError, match=match):
        checkpoint_uri("s3://bucket/checkpoints", literal)
    with pytest.raises(ValueError, match=match):
        snapshot.for_pipeline(
            str(table),
            (),
            preset="default",
            overrides={},
            arch="",
            pretrained="",
            tracking_uri="off",
            experiment_name="clipcite",
            kfp_run_id=literal,
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            run_uri=str(tmp_path / "mlflow_run"),
        )
    with pytest.raises(ValueError, match=match):
        _run_exit_task(f"sqlite:///{tmp_path / 'mlflow.db'}", literal, _backend_status("COMPLETE"), tmp_path)
    assert checkpoint_uri("s3://bucket/checkpoints", "7f3c") == "s3://bucket/checkpoints/7f3c/finetune"


# ------------------------------------------------------------------------------------------------- 4. loops


def _tasks(spec: dict, component: str) -> dict:
    return spec["components"][component]["dag"]["tasks"]


def test_no_retry_policy_is_left_where_the_backend_ignores_it_and_evaluate_retries_itself():
    """backend/src/v2/compiler/argocompiler/ does not apply a task's retry policy inside a ParallelFor
    (kubeflow/pipelines #12389, open): the evaluate task carries none and its step retries transient failures
    (``attempts``, from CLIPCITE_RETRIES); the tasks outside the loop keep KFP's."""
    spec = next(yaml.safe_load_all((ROOT / "pipeline.yaml").read_text()))
    loops = [name for name, c in spec["components"].items() if name.startswith("comp-for-loop")]
    assert loops, "the ParallelFor over the eval domains is gone"
    for loop in loops:
        for name, task in _tasks(spec, loop).items():
            assert "retryPolicy" not in task, f"{name} inside {loop} has a retry policy the backend ignores"
        attempts = _tasks(spec, loop)["evaluate"]["inputs"]["parameters"]["attempts"]["runtimeValue"]["constant"]
        assert attempts == 3  # CLIPCITE_RETRIES' default 2, plus the first try
    outside = _tasks(spec, "comp-exit-handler-1")
    assert "retryPolicy" in outside["finetune"] and "retryPolicy" in outside["snapshot"]


def test_retries_cure_transient_failures_only(monkeypatch):
    monkeypatch.setattr(retry.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("connection reset by peer")
        return "scored"

    assert retry.with_retries(flaky, attempts=3, what="evaluate-photo") == "scored" and len(calls) == 3
    calls.clear()
    with pytest.raises(ConnectionResetError):
        retry.with_retries(flaky, attempts=2, what="evaluate-photo")
    for permanent in (FileNotFoundError("s3://b/k: no such file"), ValueError("bad config"), KeyError("x")):
        seen: list[int] = []

        def broken(error=permanent, seen=seen):
            seen.append(1)
            raise error

        with pytest.raises(type(permanent)):
            retry.with_retries(broken, attempts=3, what="evaluate-photo")
        assert len(seen) == 1  # not retried
    from botocore.exceptions import ClientError

    throttled = ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")
    denied = ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")
    wrapped = RuntimeError("s3://b/k: read failed")
    wrapped.__cause__ = throttled
    assert retry.is_transient(throttled) and retry.is_transient(wrapped) and not retry.is_transient(denied)


# --------------------------------------------------------------------------------- 5. MLflow inside KFP


def test_kfp_mlflow_integrations_run_id_is_neither_the_pipelines_run_nor_a_steps(table, tmp_path, monkeypatch):
    """KFP 2.17's MLflow plugin (backend/src/v2/common/plugins/mlflow/handler.go, RetrieveUserContainerEnvVars)
    injects MLFLOW_RUN_ID (a nested run of that task alone) and MLFLOW_EXPERIMENT_ID into every task."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = runs.connect(uri)
    kfp_experiment = client.create_experiment("kfp-runs")
    kfp_parent = client.create_run(kfp_experiment, run_name="kfp-pipeline").info.run_id
    kfp_task = client.create_run(
        kfp_experiment, run_name="snapshot", tags={"mlflow.parentRunId": kfp_parent}
    ).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", kfp_task)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", kfp_experiment)

    ours = snapshot.run(str(table), tracking_uri=uri, experiment_name="clipcite", kfp_run_id="run-5").mlflow_run_id
    assert ours not in (kfp_task, kfp_parent)
    run = client.get_run(ours)
    assert client.get_experiment(run.info.experiment_id).name == "clipcite"
    assert run.data.tags[runs.KFP_MLFLOW_RUN_TAG] == kfp_task  # linked, not taken
    with runs.step_run(uri, ours, "finetune") as step:
        step.log_metrics({"train/total": 1.0}, 1)
    assert os.environ["MLFLOW_RUN_ID"] == kfp_task  # mlflow.start_run() would have consumed it
    nested = client.get_run(step.run_id)
    assert step.run_id != kfp_task and nested.data.tags["mlflow.parentRunId"] == ours
    assert "train/total" not in client.get_run(kfp_task).data.metrics
    assert runs.close_pipeline_run(uri, "clipcite", "run-5", succeeded=True)["run_id"] == ours


# ------------------------------------------------------------------------------------------ 6. upload checks


def test_the_compiled_spec_passes_the_api_servers_upload_checks():
    text = (ROOT / "pipeline.yaml").read_text()
    assert check_spec(text, *installed_protos()) == []
    # The check refuses what the server refuses (an unknown field, a wrong schema, a bad name).
    spec, platform = list(yaml.safe_load_all(text))
    broken = [
        ({**spec, "pipelineInfo": {**spec["pipelineInfo"], "name": "CLIP cite"}}, "not a DNS-1123 name"),
        ({**spec, "schemaVersion": "2.0.0"}, "supports only 2.1.0"),
        ({**spec, "outputs": {}}, 'no field named "outputs"'),
    ]
    for doc, message in broken:
        found = check_spec(yaml.safe_dump_all([doc, platform]), *installed_protos())
        assert any(message in problem for problem in found), (message, found)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    name = next(iter(executors))
    bad_platform = json.loads(json.dumps(platform))
    bad_platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][name]["gpuSharing"] = True
    found = check_spec(yaml.safe_dump_all([spec, bad_platform]), *installed_protos())
    assert any(f"KubernetesExecutorConfig of {name}" in p for p in found), found


def test_the_compiled_spec_passes_the_oldest_supported_backends_protos():
    """Against kfp-pipeline-spec and kfp-kubernetes of MIN_BACKEND_VERSION, in a fresh interpreter (two releases'
    generated modules cannot share one protobuf descriptor pool): a field newer than that server is caught here."""
    version = kfp_backend.MIN_BACKEND_VERSION
    pins = (ROOT / "requirements-kfp-oldest.txt").read_text()
    assert f"kfp-pipeline-spec=={version}" in pins and f"kfp-kubernetes=={version}" in pins
    assert (OLDEST_PROTOS / "kfp/pipeline_spec/pipeline_spec_pb2.py").is_file(), "run `make setup` (it installs them)"
    checked = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests/support/kfp_upload_check.py"),
            str(ROOT / "pipeline.yaml"),
            str(OLDEST_PROTOS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0 and checked.stdout.strip() == "ok", checked.stdout + checked.stderr


def test_the_several_methods_spec_passes_the_upload_checks_of_today_and_the_oldest_backend(tmp_path):
    """The candidates' DAG (docs/cluster.md "Several methods"): its optional select inputs, per-method finetune
    tasks and display names as the API server and the oldest supported one read them."""
    settings = pipeline_settings.ClusterSettings(methods=("cite", "lora", "linear_probe"))
    path = dag.compile_pipeline(tmp_path / "methods.yaml", settings)
    assert check_spec(path.read_text(), *installed_protos()) == []
    checked = subprocess.run(
        [sys.executable, str(ROOT / "tests/support/kfp_upload_check.py"), str(path), str(OLDEST_PROTOS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0 and checked.stdout.strip() == "ok", checked.stdout + checked.stderr
