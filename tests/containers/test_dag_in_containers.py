"""`pipeline.py run --runner docker`: the whole DAG through kfp.local's DockerRunner on podman's Docker API, in the
images; the summary equals the subprocess run's, and a failed container fails its task (kfp's auto_remove race,
clipcite/pipeline/local_docker.py). Runs bench/containers.py's smoke form."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.containers

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_containers", ROOT / "bench" / "containers.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def docker_host(tmp_path_factory):
    with bench.docker_api(tmp_path_factory.mktemp("podman")) as host:
        yield host


def test_the_dag_in_containers_prints_the_subprocess_runs_summary(docker_host, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    runs = bench.compare(tmp_path, bench.SMOKE)
    for name, run in runs.items():
        assert run["returncode"] == 0, f"{name}:\n{run['output'][-4000:]}"
    containers, subprocesses = runs["containers"], runs["subprocesses"]
    assert containers["table"] and containers["table"] == subprocesses["table"]
    ratio = containers["seconds"] / subprocesses["seconds"]
    seconds = f"{containers['seconds']:.0f} / {subprocesses['seconds']:.0f} s"
    print(f"wall time containers / subprocesses: {ratio:.2f} ({seconds})")


def test_a_container_that_exits_non_zero_fails_the_run_and_names_its_step(docker_host, tmp_path):
    checkpoint = tmp_path / "weights" / "toyclip.safetensors"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"this is not a checkpoint")
    command = [sys.executable, str(ROOT / "pipeline.py"), "run", "--runner", "docker", "--out", str(tmp_path / "run")]
    command += ["--tracking-uri", "off", *bench.SMOKE, "--param", f"pretrained={checkpoint}"]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "DOCKER_HOST": docker_host}
    )
    assert done.returncode != 0, done.stdout[-3000:]
    assert "task 'cache-teacher' failed" in done.stderr, done.stderr[-3000:]
    assert f"{checkpoint}: cannot load checkpoint" in done.stderr  # the step's own error, from inside its container


def _local_docker_and_image(docker_host, monkeypatch):
    import docker
    from clipcite.pipeline import local_docker

    monkeypatch.setenv("DOCKER_HOST", docker_host)
    client = docker.from_env(timeout=30)
    image = next(i for i in (t for im in client.images.list() for t in im.tags) if "clipcite-cpu" in i)
    return local_docker, client, image


def test_run_container_reads_a_failing_containers_exit_code_every_time(docker_host, monkeypatch):
    """Why local_docker.run_container exists: with kfp's auto_remove, the engine may have removed a failed container
    before its exit code is read (podman: a 500, kfp's run dies; a 404: kfp returns 0). The replacement keeps the
    container until its code is read, then removes it; and it reads the code from the container's state, with a
    deadline, where a wait() on podman 4.3 hung the tier for 40 minutes on a container that sat Exited."""
    local_docker, client, image = _local_docker_and_image(docker_host, monkeypatch)
    before = {c.id for c in client.containers.list(all=True)}
    for _ in range(3):
        start = time.monotonic()
        assert local_docker.run_container(client, image, ["sh", "-c", "echo failing; exit 3"], {}, timeout=120) == 3
        assert time.monotonic() - start < 60
    assert {c.id for c in client.containers.list(all=True)} == before  # each removed after its code was read


def test_a_container_that_exited_before_the_wait_began_is_seen_in_seconds(docker_host, monkeypatch):
    """The race on purpose: the container has exited (podman says Exited) before anything waits for it."""
    local_docker, client, image = _local_docker_and_image(docker_host, monkeypatch)
    container = client.containers.run(image, ["sh", "-c", "echo early; exit 4"], detach=True)
    try:
        for _ in range(600):
            container.reload()
            if container.status == "exited":
                break
            time.sleep(0.1)
        assert container.status == "exited", container.status
        start = time.monotonic()
        assert local_docker.wait_for_exit(container, time.monotonic() + 60) == 4
        assert time.monotonic() - start < 5
    finally:
        container.remove(force=True)


def test_a_container_past_its_deadline_fails_with_its_id_and_last_lines_and_is_removed(docker_host, monkeypatch):
    local_docker, client, image = _local_docker_and_image(docker_host, monkeypatch)
    before = {c.id for c in client.containers.list(all=True)}
    command = ["sh", "-c", "echo still here; sleep 600"]
    with pytest.raises(local_docker.ContainerTimeout, match=r"still running after 3 s(.|\n)*still here"):
        local_docker.run_container(client, image, command, {}, timeout=3)
    assert {c.id for c in client.containers.list(all=True)} == before
