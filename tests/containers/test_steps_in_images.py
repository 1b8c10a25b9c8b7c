"""Every task of the compiled pipeline.yaml, run inside its image the way a cluster runs it, against S3 and MLflow on
loopback; its outputs equal the same tasks run as subprocesses in this environment.

`make test-containers` builds the images and runs this tier (`pytest --containers tests/containers`); `make test`
leaves it out. Each task runs as the KFP backend runs it (see kfp_driver.py): the container's command and args from
the IR, the executor input as the driver fills it (artifact URIs ``s3://...``, read at ``/s3/...``), inputs
downloaded to and outputs uploaded from the task's scratch volumes, the environment the manifests inject
(manifests/base/pipeline-access/poddefault.yaml), as uid 10001 with a read-only root filesystem and only the
volumes a pod has writable: ``/tmp``, ``/dev/shm`` and KFP's scratch emptyDirs (``/s3``, ``/minio``, ``/gcs``,
``/.local``, ``/.cache``, ``/.config``; backend/src/v2/compiler/argocompiler/container.go).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import boto3
import pytest
import yaml

from tests.support.kfp_driver import Driver, Result, Task
from tests.support.servers import mlflow_server, s3_environment, s3_store

pytestmark = pytest.mark.containers

ROOT = Path(__file__).resolve().parents[2]
ENGINE = os.environ.get("CONTAINER_ENGINE", "podman")
BUCKET, ARTIFACTS = "clipcite-data", "mlflow-artifacts"
SCRATCH = ("/s3", "/minio", "/gcs", "/.local", "/.cache", "/.config")  # KFP's emptyDirs in every task pod
TASK_TIMEOUT_S = 1800


def spec() -> dict:
    return next(yaml.safe_load_all((ROOT / "pipeline.yaml").read_text()))


def injected_env_names() -> list[str]:
    """The variables the PodDefault injects into every pipeline pod (the optional ones only behind prod's auth)."""
    poddefault = yaml.safe_load((ROOT / "manifests/base/pipeline-access/poddefault.yaml").read_text())
    return [
        e["name"]
        for e in poddefault["spec"]["env"]
        if not e.get("valueFrom", {}).get("secretKeyRef", {}).get("optional")
    ]


def sha256_tree(path: Path) -> dict[str, str]:
    """Each file under ``path`` (or ``path`` itself) by its content hash, keyed by its path relative to ``path``."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)) if p != path else ".": hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# ---------------------------------------------------------------------------------------------- the executors


class Pods:
    """Runs a task in its image: a fresh scratch volume per task; the launcher's downloads and uploads done here."""

    def __init__(self, work: Path, env: dict[str, str], endpoint: str) -> None:
        self.work, self.env = work, env
        self.s3 = boto3.client("s3", endpoint_url=endpoint)

    @staticmethod
    def local_path(uri: str) -> str:
        assert uri.startswith("s3://"), uri
        return "/s3/" + uri.removeprefix("s3://")  # backend/src/v2/component/launcher_v2.go, LocalPathForURI

    def __call__(self, task: Task) -> Result:
        pod = self.work / "pods" / task.name.replace("/", "-")
        volumes = {mount: pod / mount.strip("/") for mount in SCRATCH}
        for host in volumes.values():
            host.mkdir(parents=True)
        for artifact in task.input_artifacts():
            self._download(artifact["uri"], pod / "s3" / artifact["uri"].removeprefix("s3://"))
        for directory in [pod, *pod.rglob("*")]:  # emptyDirs are writable by the pod's user
            if directory.is_dir():
                directory.chmod(0o777)
        command = [ENGINE, "run", "--rm", "--user", "10001", "--read-only", "--read-only-tmpfs=false"]
        command += ["--tmpfs", "/tmp:rw,mode=1777", "--shm-size", "2g"]
        for mount, host in volumes.items():
            command += ["-v", f"{host}:{mount}"]
        for key, value in self.env.items():
            command += ["-e", f"{key}={value}"]
        done = subprocess.run(
            [*command, task.image, *task.command()], capture_output=True, text=True, timeout=TASK_TIMEOUT_S
        )
        result = Result(done.returncode, done.stdout + done.stderr)
        output_file = pod / task.executor_input["outputs"]["outputFile"].lstrip("/")
        if done.returncode == 0:
            result.executor_output = json.loads(output_file.read_text()) if output_file.exists() else {}
            for artifact in task.output_artifacts():
                self._upload(pod / "s3" / artifact["uri"].removeprefix("s3://"), artifact["uri"])
        return result

    def _download(self, uri: str, local: Path) -> None:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        listed = [item for page in pages for item in page.get("Contents", [])]
        for item in listed:  # none: an output its task wrote no file for (launcher_v2.go skips it too)
            if item["Key"] != key and not item["Key"].startswith(f"{key}/"):
                continue  # a sibling sharing the prefix (.../model vs .../model_card)
            target = local if item["Key"] == key else local / item["Key"][len(key) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(bucket, item["Key"], str(target))

    def _upload(self, local: Path, uri: str) -> None:
        """launcher_v2.go's uploadOutputArtifacts: an output with no file (a Metrics artifact: its values are in the
        executor output's metadata) is allowed and uploads nothing."""
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not local.exists():
            return
        files = [local] if local.is_file() else [p for p in local.rglob("*") if p.is_file()]
        for path in files:
            self.s3.upload_file(str(path), bucket, key if path == local else f"{key}/{path.relative_to(local)}")

    def artifact(self, task: str, uri: str) -> Path:
        """Where a task's output artifact is on this machine (its pod's scratch volume)."""
        return self.work / "pods" / task.replace("/", "-") / "s3" / uri.removeprefix("s3://")


class Subprocesses:
    """Runs a task's command on this machine, in this environment (artifact URIs are local paths, as kfp.local's)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    @staticmethod
    def local_path(uri: str) -> str:
        return uri

    def __call__(self, task: Task) -> Result:
        done = subprocess.run(
            task.command(), capture_output=True, text=True, cwd=ROOT, env=self.env, timeout=TASK_TIMEOUT_S
        )
        output_file = Path(task.executor_input["outputs"]["outputFile"])
        executor_output = json.loads(output_file.read_text()) if done.returncode == 0 and output_file.exists() else {}
        return Result(done.returncode, done.stdout + done.stderr, executor_output)


# ----------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def images() -> None:
    """The images pipeline.yaml names, built by `make images` (make test-containers builds them first)."""
    for image in sorted({e["container"]["image"] for e in spec()["deploymentSpec"]["executors"].values()}):
        found = subprocess.run([ENGINE, "image", "exists", image], capture_output=True)
        if found.returncode != 0:
            pytest.fail(f"{image} is not built: run `make test-containers` (it builds the images) or `make images`")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """moto S3 and an MLflow server (artifacts proxied to that S3) on 127.0.0.1, and the toy world in S3."""
    from clipcite.toyworld.generate import write_world

    work = tmp_path_factory.mktemp("servers")
    with pytest.MonkeyPatch.context() as mp, s3_store(mp, BUCKET, ARTIFACTS) as endpoint:
        write_world(f"s3://{BUCKET}/toyworld", seed=1)
        with mlflow_server(work, f"s3://{ARTIFACTS}", endpoint) as mlflow_url:
            values = {**s3_environment(endpoint), "MLFLOW_TRACKING_URI": mlflow_url}
            yield endpoint, {name: values[name] for name in injected_env_names()}


def parameters(prefix: str) -> dict:
    """`make run`'s parameters, with every store in S3 (a cluster's), one prefix and one registered model per run so
    neither reuses the other's caches or evaluates against the other's champion."""
    return {
        "registered_model_name": f"clipcite-{prefix}",
        "data_uri": f"s3://{BUCKET}/toyworld",
        "baseline_cache": f"s3://{BUCKET}/{prefix}/baselines",
        "teacher_store": f"s3://{BUCKET}/{prefix}/teachers",
        "checkpoint_root": f"s3://{BUCKET}/{prefix}/checkpoints",
    }


@pytest.fixture(scope="module")
def runs(images, servers, tmp_path_factory):
    """The DAG walked twice: every task in its image, then every task as a subprocess."""
    endpoint, injected = servers
    work = tmp_path_factory.mktemp("dag")
    pods = Pods(work, injected, endpoint)
    in_images = Driver(spec(), pipeline_root=f"s3://{BUCKET}/kfp", execute=pods, local_path=pods.local_path)
    container_run = in_images.run(parameters("containers"), run_id="run-containers")
    host_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | s3_environment(endpoint)
    host_env |= injected | {"PYTHONPATH": str(ROOT)}
    subprocesses = Subprocesses(host_env)
    local = Driver(spec(), pipeline_root=str(work / "local"), execute=subprocesses, local_path=str)
    subprocess_run = local.run(parameters("subprocesses"), run_id="run-subprocesses")
    return pods, container_run, subprocess_run


def _uri(run, task: str, output: str) -> str:
    return run.outputs[task]["artifacts"][output][0]["uri"]


# ---------------------------------------------------------------------------------------------------------- tests


def test_every_task_of_the_ir_runs_in_its_image(runs):
    _, container_run, subprocess_run = runs
    executed = {name.split("/")[-1] for name in container_run.results}
    in_ir = {name.removeprefix("exec-") for name in spec()["deploymentSpec"]["executors"]}
    assert executed == in_ir, f"tasks of pipeline.yaml not run: {in_ir - executed}"
    for name, result in container_run.results.items():
        assert result.returncode == 0, f"{name} failed in its image:\n{result.output[-4000:]}"
    assert container_run.state == subprocess_run.state == "COMPLETE"
    assert set(container_run.results) == set(subprocess_run.results)


def test_splits_and_teacher_cache_are_the_same_bytes_as_the_subprocess_runs(runs):
    pods, container_run, subprocess_run = runs
    for task, output in (("exit-handler-1/sample-splits", "splits"), ("exit-handler-1/cache-teacher", "teacher")):
        in_image = sha256_tree(pods.artifact(task, _uri(container_run, task, output)))
        in_venv = sha256_tree(Path(_uri(subprocess_run, task, output)))
        assert in_image and in_image == in_venv, f"{task}.{output} differs"
    assert (
        container_run.outputs["exit-handler-1/snapshot"]["parameters"]["digest"]
        == (subprocess_run.outputs["exit-handler-1/snapshot"]["parameters"]["digest"])
    )


def test_metrics_equal_the_subprocess_runs(runs):
    _, container_run, subprocess_run = runs
    evaluations = sorted(name for name in container_run.outputs if name.endswith("/evaluate"))
    assert len(evaluations) >= 2  # one per evaluation domain
    for name in evaluations:
        in_image = container_run.outputs[name]["artifacts"]["metrics"][0]["metadata"]
        in_venv = subprocess_run.outputs[name]["artifacts"]["metrics"][0]["metadata"]
        assert in_image and in_image.keys() == in_venv.keys(), name
        for key, value in in_image.items():
            assert value == pytest.approx(in_venv[key], abs=1e-6), f"{name}: {key}"


def test_a_step_that_raises_fails_its_container_with_the_steps_error(images, servers, tmp_path):
    endpoint, injected = servers
    pods = Pods(tmp_path, injected, endpoint)
    driver = Driver(spec(), pipeline_root=f"s3://{BUCKET}/kfp-bad", execute=pods, local_path=pods.local_path)
    run = driver.run({**parameters("bad"), "data_uri": f"s3://{BUCKET}/no-such-table"}, run_id="run-bad")
    assert run.state == "FAILED" and run.failed_task == "exit-handler-1/snapshot"
    failed = run.results["exit-handler-1/snapshot"]
    assert failed.returncode != 0
    assert f"s3://{BUCKET}/no-such-table" in failed.output, failed.output[-3000:]
    assert "finish-run" in run.results and run.results["finish-run"].returncode == 0  # the exit handler still ran
    assert not any(name.endswith("/sample-splits") for name in run.results)  # nothing after the failed step
