"""A small stand-in for KFP's driver and launcher: walk the compiled ``pipeline.yaml`` and run each task's container
command with the executor input the backend would hand it.

It follows kubeflow/pipelines' backend (branch release-2.17): ``backend/src/v2/driver/driver.go`` (the executor
input: parameter values, input artifacts with their URIs, output artifact URIs under the pipeline root, output
parameters at ``/tmp/kfp/outputs/<name>``, the executor output file under the task's local root),
``backend/src/v2/driver/resolve.go`` (inputs from the parent DAG, from upstream tasks' outputs, loop items,
``{{$.pipeline_job_uuid}}``, the exit task's ``PipelineTaskFinalStatus`` with ML Metadata's state words and an
empty error) and ``backend/src/v2/component/launcher_v2.go`` (input artifacts downloaded from the object store to
the local path their URI maps to, ``s3://b/k`` -> ``/s3/b/k``; outputs uploaded from there afterwards). What runs
a task is the caller's ``execute`` function: in the task's image (podman) or as a subprocess.

Not covered: caching, retries, the Kubernetes platform spec beyond what the caller applies, conditions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

# What an executor run returns: its exit code, its output (stdout and stderr) and the executor output file's JSON.
Execute = Callable[["Task"], "Result"]


@dataclass
class Result:
    returncode: int
    output: str
    executor_output: dict = field(default_factory=dict)


@dataclass
class Task:
    """One executor run: the task's name (``evaluate-2`` for a loop's third iteration), its executor from the IR and
    the executor input the driver made."""

    name: str
    executor: dict
    executor_input: dict

    @property
    def image(self) -> str:
        return self.executor["container"]["image"]

    def command(self) -> list[str]:
        """The container's command and args, with ``{{$}}`` replaced by the executor input (the launcher's job)."""
        text = json.dumps(self.executor_input)
        container = self.executor["container"]
        return [arg.replace("{{$}}", text) for arg in [*container["command"], *container.get("args", [])]]

    def input_artifacts(self) -> list[dict]:
        return [a for entry in self.executor_input["inputs"].get("artifacts", {}).values() for a in entry["artifacts"]]

    def output_artifacts(self) -> list[dict]:
        return [a for entry in self.executor_input["outputs"].get("artifacts", {}).values() for a in entry["artifacts"]]


class TaskFailed(RuntimeError):
    def __init__(self, task: str, result: Result) -> None:
        super().__init__(f"task {task} exited {result.returncode}")
        self.task, self.result = task, result


@dataclass
class Run:
    """A pipeline run: its id, the outputs of every task (parameters and artifacts by task name) and each executor
    run's result, in order."""

    run_id: str
    state: str = "RUNNING"
    outputs: dict[str, dict] = field(default_factory=dict)
    results: dict[str, Result] = field(default_factory=dict)
    failed_task: str = ""


class Driver:
    def __init__(self, spec: dict, *, pipeline_root: str, execute: Execute, local_path: Callable[[str], str]) -> None:
        """``spec`` is the first YAML document of ``pipeline.yaml``; output artifacts get URIs under
        ``pipeline_root``; ``local_path(uri)`` is where the container reads and writes an artifact (``.path``)."""
        self.spec = spec
        self.pipeline_root = pipeline_root.rstrip("/")
        self.execute = execute
        self.local_path = local_path

    def run(self, parameters: dict, *, run_id: str, run_name: str = "") -> Run:
        root = self.spec["root"]
        values = {
            name: parameters.get(name, spec.get("defaultValue"))
            for name, spec in root["inputDefinitions"]["parameters"].items()
        }
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise ValueError(f"pipeline parameters without a value: {missing}")
        run = Run(run_id)
        self._run_name = run_name or run_id
        self._dag(run, root["dag"], {"parameters": values, "artifacts": {}}, scope="")
        if run.state == "RUNNING":
            run.state = "COMPLETE"
        return run

    # ------------------------------------------------------------------------------------------------- the DAG

    def _dag(self, run: Run, dag: dict, inputs: dict, *, scope: str) -> bool:
        """Run a DAG's tasks in dependency order; False once a task failed (the rest of the DAG is skipped, except
        the tasks triggered by ALL_UPSTREAM_TASKS_COMPLETED: the exit handler)."""
        tasks = dag["tasks"]
        done: dict[str, bool] = {}
        while len(done) < len(tasks):
            ready = [
                name
                for name, task in tasks.items()
                if name not in done and all(dep in done for dep in task.get("dependentTasks", []))
            ]
            if not ready:
                raise ValueError(f"cycle among {sorted(set(tasks) - set(done))}")
            for name in sorted(ready):
                task = tasks[name]
                deps_ok = all(done[dep] for dep in task.get("dependentTasks", []))
                exit_task = task.get("triggerPolicy", {}).get("strategy") == "ALL_UPSTREAM_TASKS_COMPLETED"
                if not deps_ok and not exit_task:
                    done[name] = False
                    continue
                done[name] = self._task(run, name, task, inputs, scope=scope)
        return all(done.values())

    def _task(self, run: Run, name: str, task: dict, inputs: dict, *, scope: str) -> bool:
        component = self.spec["components"][task["componentRef"]["name"]]
        resolved = self._inputs(run, task, component, inputs, scope=scope)
        key = f"{scope}{name}"
        if "dag" in component:
            return self._sub_dag(run, key, task, component, resolved)
        executor = self.spec["deploymentSpec"]["executors"][component["executorLabel"]]
        executor_input = self._executor_input(key, component, resolved)
        result = self.execute(Task(key, executor, executor_input))
        run.results[key] = result
        if result.returncode != 0:
            run.state, run.failed_task = "FAILED", run.failed_task or key
            return False
        run.outputs[key] = self._outputs(component, executor_input, result.executor_output)
        return True

    def _sub_dag(self, run: Run, key: str, task: dict, component: dict, inputs: dict) -> bool:
        """A DAG component: once, or once per item of its ``parameterIterator`` (a ParallelFor), collecting the
        artifacts its ``dag.outputs`` select into lists (what ``dsl.Collected`` receives)."""
        dag = component["dag"]
        iterator = task.get("parameterIterator")
        runs = [inputs]
        if iterator:
            items = inputs["parameters"][iterator["items"]["inputParameter"]]
            items = json.loads(items) if isinstance(items, str) else items
            runs = [{**inputs, "parameters": {**inputs["parameters"], iterator["itemInput"]: item}} for item in items]
        ok = True
        for index, sub_inputs in enumerate(runs):
            ok = self._dag(run, dag, sub_inputs, scope=f"{key}/{index}/" if iterator else f"{key}/") and ok
        collected: dict[str, list] = {}
        for out_name, selector in dag.get("outputs", {}).get("artifacts", {}).items():
            for pick in selector["artifactSelectors"]:
                for index in range(len(runs)):
                    sub_scope = f"{key}/{index}/" if iterator else f"{key}/"
                    produced = run.outputs.get(f"{sub_scope}{pick['producerSubtask']}", {}).get("artifacts", {})
                    collected.setdefault(out_name, []).extend(produced.get(pick["outputArtifactKey"], []))
        run.outputs[key] = {"parameters": {}, "artifacts": collected}
        return ok

    # ---------------------------------------------------------------------------------------------- inputs

    def _inputs(self, run: Run, task: dict, component: dict, parent: dict, *, scope: str) -> dict:
        parameters, artifacts = {}, {}
        definitions = component.get("inputDefinitions", {})
        for name, source in task.get("inputs", {}).get("parameters", {}).items():
            parameters[name] = self._parameter(run, source, parent, scope=scope)
        for name, spec in definitions.get("parameters", {}).items():
            if name not in parameters and "defaultValue" in spec:
                parameters[name] = spec["defaultValue"]
            if spec.get("parameterType") == "NUMBER_INTEGER" and isinstance(parameters.get(name), float):
                parameters[name] = int(parameters[name])
        for name, source in task.get("inputs", {}).get("artifacts", {}).items():
            if "componentInputArtifact" in source:
                artifacts[name] = parent["artifacts"][source["componentInputArtifact"]]
            else:
                producer = source["taskOutputArtifact"]
                produced = run.outputs[f"{scope}{producer['producerTask']}"]["artifacts"]
                artifacts[name] = produced[producer["outputArtifactKey"]]
        return {"parameters": parameters, "artifacts": artifacts}

    def _parameter(self, run: Run, source: dict, parent: dict, *, scope: str):
        if "componentInputParameter" in source:
            return parent["parameters"][source["componentInputParameter"]]
        if "taskOutputParameter" in source:
            producer = source["taskOutputParameter"]
            return run.outputs[f"{scope}{producer['producerTask']}"]["parameters"][producer["outputParameterKey"]]
        if "runtimeValue" in source:
            return self._placeholders(source["runtimeValue"]["constant"], run)
        if "taskFinalStatus" in source:
            # resolve.go: State from ML Metadata's execution state, Error an empty status (a TODO upstream).
            return {
                "state": "COMPLETE" if run.state == "RUNNING" else run.state,
                "error": {},
                "pipelineJobResourceName": f"runs/{run.run_id}",
                "pipelineTaskName": source["taskFinalStatus"]["producerTask"],
            }
        raise ValueError(f"unsupported input source {source}")

    def _placeholders(self, value, run: Run):
        if not isinstance(value, str):
            return value
        value = value.replace("{{$.pipeline_job_uuid}}", run.run_id)
        value = value.replace("{{$.pipeline_job_name}}", self._run_name)
        if re.search(r"\{\{\$\.", value):
            raise ValueError(f"unsupported placeholder in {value!r}")
        return value

    def _executor_input(self, key: str, component: dict, inputs: dict) -> dict:
        task_root = f"{self.pipeline_root}/{key.replace('/', '-')}"
        outputs = component.get("outputDefinitions", {})
        return {
            "inputs": {
                "parameterValues": inputs["parameters"],
                "artifacts": {name: {"artifacts": list(items)} for name, items in inputs["artifacts"].items()},
            },
            "outputs": {
                "parameters": {
                    name: {"outputFile": f"/tmp/kfp/outputs/{name}"} for name in outputs.get("parameters", {})
                },
                "artifacts": {
                    name: {
                        "artifacts": [
                            {"name": name, "uri": f"{task_root}/{name}", "type": spec["artifactType"], "metadata": {}}
                        ]
                    }
                    for name, spec in outputs.get("artifacts", {}).items()
                },
                "outputFile": f"{self.local_path(task_root)}/output_metadata.json",
            },
        }

    @staticmethod
    def _outputs(component: dict, executor_input: dict, executor_output: dict) -> dict:
        """The task's outputs as downstream tasks receive them: parameters from the executor output file, artifacts
        as the driver made them, with the metadata the executor wrote."""
        artifacts = {}
        for name, entry in executor_input["outputs"].get("artifacts", {}).items():
            written = executor_output.get("artifacts", {}).get(name, {}).get("artifacts", [{}])
            artifacts[name] = [
                {**made, "metadata": {**made.get("metadata", {}), **got.get("metadata", {})}}
                for made, got in zip(entry["artifacts"], written or [{}], strict=False)
            ]
        parameters = executor_output.get("parameterValues", {})
        missing = set(component.get("outputDefinitions", {}).get("parameters", {})) - set(parameters)
        if missing:
            raise ValueError(f"the executor wrote no value for output parameters {sorted(missing)}")
        return {"parameters": parameters, "artifacts": artifacts}
