"""The KFP driver stand-in the container tests trust, on the committed ``pipeline.yaml`` with a recording ``execute``
(no container engine): the order tasks run in, the parameters and artifacts each task is handed, the loop over
domains, the exit task's status, and the errors for what it cannot resolve."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from tests.support.kfp_driver import Driver, Result, Task

ROOT = Path(__file__).resolve().parents[2]
SPEC = next(yaml.safe_load_all((ROOT / "pipeline.yaml").read_text()))
DOMAINS = ["photo", "sketch"]
EH = "exit-handler-1"
LOOP = f"{EH}/for-loop-2"


def _local(uri: str) -> str:
    return uri.replace("s3://", "/s3/", 1)


class Recorder:
    """An ``execute`` that records each task and writes what its component declares: output parameters (sample-splits'
    ``Output`` is the list of domains the loop goes over) and a metadata entry on each output artifact."""

    def __init__(self, fail: str = "") -> None:
        self.tasks: list[Task] = []
        self.fail = fail

    def __call__(self, task: Task) -> Result:
        self.tasks.append(task)
        if task.name == self.fail:
            return Result(1, "Traceback ...")
        outputs = task.executor_input["outputs"]
        parameters = {name: f"{task.name}:{name}" for name in outputs.get("parameters", {})}
        if "Output" in parameters:
            parameters["Output"] = DOMAINS
        artifacts = {name: {"artifacts": [{"metadata": {"by": task.name}}]} for name in outputs.get("artifacts", {})}
        return Result(0, "ok", {"parameterValues": parameters, "artifacts": artifacts})

    def by_name(self) -> dict[str, Task]:
        return {task.name: task for task in self.tasks}


def _run(recorder: Recorder, spec: dict = SPEC, **parameters):
    driver = Driver(spec, pipeline_root="s3://bucket/root/", execute=recorder, local_path=_local)
    return driver.run({"data_uri": "s3://bucket/table", **parameters}, run_id="run-42", run_name="nightly")


def test_every_task_runs_once_after_the_tasks_it_depends_on():
    recorder = Recorder()
    run = _run(recorder)
    names = [task.name for task in recorder.tasks]
    assert names == [
        f"{EH}/snapshot",
        f"{EH}/sample-splits",
        f"{EH}/cache-teacher",
        f"{EH}/finetune",
        f"{LOOP}/0/evaluate",
        f"{LOOP}/1/evaluate",
        f"{EH}/register",
        "finish-run",
    ]
    assert run.state == "COMPLETE" and run.failed_task == "" and list(run.results) == names
    assert recorder.tasks[0].image == SPEC["deploymentSpec"]["executors"]["exec-snapshot"]["container"]["image"]


def test_parameters_come_from_the_run_the_defaults_upstream_outputs_and_placeholders():
    recorder = Recorder()
    _run(recorder, shots=4.0, overrides={"train.epochs": 1})
    tasks = recorder.by_name()
    snapshot = tasks[f"{EH}/snapshot"].executor_input["inputs"]["parameterValues"]
    assert snapshot["data_uri"] == "s3://bucket/table" and snapshot["overrides"] == {"train.epochs": 1}
    assert snapshot["shots"] == 4 and isinstance(snapshot["shots"], int)  # NUMBER_INTEGER: a float becomes an int
    assert snapshot["seed"] == 1 and isinstance(snapshot["seed"], int)  # the pipeline's default, 1.0 in the IR
    assert snapshot["config"] == "default" and snapshot["eval_data_uris"] == []
    assert (snapshot["kfp_run_id"], snapshot["kfp_run_name"]) == ("run-42", "nightly")  # {{$.pipeline_job_*}}
    splits = tasks[f"{EH}/sample-splits"].executor_input["inputs"]["parameterValues"]
    assert splits["data_digest"] == f"{EH}/snapshot:digest"  # taskOutputParameter
    teacher = tasks[f"{EH}/cache-teacher"].executor_input["inputs"]["parameterValues"]
    assert teacher["model_identity"] == f"{EH}/snapshot:model_identity"
    finetune = tasks[f"{EH}/finetune"].executor_input["inputs"]["parameterValues"]
    assert finetune["method"] == ""  # no input given: the component's own default
    evaluate = [tasks[f"{LOOP}/{i}/evaluate"].executor_input["inputs"]["parameterValues"] for i in (0, 1)]
    assert [e["domain"] for e in evaluate] == DOMAINS  # the loop item
    assert [e["attempts"] for e in evaluate] == [3, 3] and isinstance(evaluate[0]["attempts"], int)


def test_output_artifacts_get_uris_under_the_root_and_reach_downstream_with_their_metadata():
    recorder = Recorder()
    run = _run(recorder)
    tasks = recorder.by_name()
    snapshot = tasks[f"{EH}/snapshot"].executor_input["outputs"]
    assert snapshot["artifacts"]["mlflow_run"]["artifacts"] == [
        {
            "name": "mlflow_run",
            "uri": "s3://bucket/root/exit-handler-1-snapshot/mlflow_run",
            "type": {"schemaTitle": "system.Artifact", "schemaVersion": "0.0.1"},
            "metadata": {},
        }
    ]
    assert snapshot["parameters"] == {
        "digest": {"outputFile": "/tmp/kfp/outputs/digest"},
        "model_identity": {"outputFile": "/tmp/kfp/outputs/model_identity"},
    }
    assert snapshot["outputFile"] == "/s3/bucket/root/exit-handler-1-snapshot/output_metadata.json"  # local_path

    finetune = tasks[f"{EH}/finetune"]
    by_input = {name: entry["artifacts"] for name, entry in finetune.executor_input["inputs"]["artifacts"].items()}
    assert by_input["teacher"] == [
        {
            "name": "teacher",
            "uri": "s3://bucket/root/exit-handler-1-cache-teacher/teacher",
            "type": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"},
            "metadata": {"by": f"{EH}/cache-teacher"},  # what the executor wrote, merged
        }
    ]
    assert by_input["splits"][0]["uri"] == "s3://bucket/root/exit-handler-1-sample-splits/splits"
    assert [a["uri"] for a in finetune.input_artifacts()] == [
        by_input[name][0]["uri"] for name in finetune.executor_input["inputs"]["artifacts"]
    ]
    # inside the loop the parent DAG's artifacts arrive as componentInputArtifact
    evaluate = tasks[f"{LOOP}/1/evaluate"]
    assert evaluate.executor_input["inputs"]["artifacts"]["model"]["artifacts"][0]["uri"] == (
        "s3://bucket/root/exit-handler-1-finetune/model"
    )
    assert evaluate.executor_input["outputs"]["artifacts"]["report"]["artifacts"][0]["uri"] == (
        "s3://bucket/root/exit-handler-1-for-loop-2-1-evaluate/report"
    )
    assert [a["name"] for a in evaluate.output_artifacts()] == ["metrics", "report"]
    # dsl.Collected: register gets every iteration's report, in loop order
    reports = tasks[f"{EH}/register"].executor_input["inputs"]["artifacts"]["reports"]["artifacts"]
    assert [a["uri"] for a in reports] == [
        f"s3://bucket/root/exit-handler-1-for-loop-2-{i}-evaluate/report" for i in (0, 1)
    ]
    assert run.outputs[LOOP]["artifacts"]["pipelinechannel--evaluate-report"] == reports


def test_the_command_carries_the_executor_input_in_place_of_the_placeholder():
    recorder = Recorder()
    _run(recorder)
    task = recorder.by_name()[f"{EH}/snapshot"]
    command = task.command()
    container = task.executor["container"]
    assert command[: len(container["command"])] == container["command"]
    position = container["args"].index("{{$}}")
    assert json.loads(command[len(container["command"]) + position]) == task.executor_input
    assert "{{$}}" not in " ".join(command)


def test_the_exit_task_gets_complete_after_a_clean_run():
    recorder = Recorder()
    _run(recorder)
    status = recorder.by_name()["finish-run"].executor_input["inputs"]["parameterValues"]["status"]
    assert status == {
        "state": "COMPLETE",
        "error": {},
        "pipelineJobResourceName": "runs/run-42",
        "pipelineTaskName": EH,
    }


def test_a_failed_task_skips_its_dependants_but_the_exit_task_runs_and_sees_failed():
    recorder = Recorder(fail=f"{EH}/cache-teacher")
    run = _run(recorder)
    assert [task.name for task in recorder.tasks] == [
        f"{EH}/snapshot",
        f"{EH}/sample-splits",
        f"{EH}/cache-teacher",
        "finish-run",
    ]
    assert run.state == "FAILED" and run.failed_task == f"{EH}/cache-teacher"
    assert run.results[f"{EH}/cache-teacher"].returncode == 1 and f"{EH}/cache-teacher" not in run.outputs
    status = recorder.by_name()["finish-run"].executor_input["inputs"]["parameterValues"]["status"]
    assert status["state"] == "FAILED" and status["pipelineTaskName"] == EH


def test_a_parameter_without_a_value_is_refused_before_anything_runs():
    recorder = Recorder()
    driver = Driver(SPEC, pipeline_root="s3://bucket/root", execute=recorder, local_path=_local)
    with pytest.raises(ValueError, match=r"pipeline parameters without a value: \['data_uri'\]"):
        driver.run({}, run_id="run-42")
    assert recorder.tasks == []


def test_an_executor_that_writes_no_output_parameter_is_an_error():
    def silent(task: Task) -> Result:
        return Result(0, "ok", {})

    driver = Driver(SPEC, pipeline_root="s3://bucket/root", execute=silent, local_path=_local)
    with pytest.raises(ValueError, match=r"no value for output parameters \['digest', 'model_identity'\]"):
        driver.run({"data_uri": "s3://bucket/table"}, run_id="run-42")


def test_an_unknown_placeholder_and_a_cycle_are_refused():
    spec = copy.deepcopy(SPEC)
    snapshot = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]["snapshot"]
    snapshot["inputs"]["parameters"]["kfp_run_name"] = {"runtimeValue": {"constant": "{{$.pipeline_root}}"}}
    with pytest.raises(ValueError, match=r"unsupported placeholder in '\{\{\$\.pipeline_root\}\}'"):
        _run(Recorder(), spec)

    spec = copy.deepcopy(SPEC)
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    tasks["snapshot"]["dependentTasks"] = ["register"]
    with pytest.raises(ValueError, match=r"cycle among \["):
        _run(Recorder(), spec)
