"""local_docker.py's waits on the engine, without an engine (a wait on podman 4.3 can block for good on a
container that sat Exited): a container that exited before anyone waited is seen from its state even where a
``wait`` call and the log stream would block for good; one that runs past its deadline fails with its id, state and
last output lines and is removed; an engine that accepts connections and never answers fails in seconds. The same
against podman: tests/containers/test_dag_in_containers.py."""

import contextlib
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

import docker
from clipcite.pipeline import local_docker

FOREVER = threading.Event()  # never set: what podman 4.3's Docker API does on a missed exit


class StuckContainer:
    """A container that already exited (its state says so) while ``wait()`` and the log follow block forever, the
    way podman 4.3's Docker API can answer a container that exited before the call."""

    id = "feedc0ffee0123456789"

    def __init__(self, states: list[dict], output: bytes = b"first line\nsecond line\n") -> None:
        self.states, self.output = states, output
        self.attrs: dict = {}
        self.removed = False
        self.reloads = 0

    def wait(self, **kwargs) -> dict:
        FOREVER.wait()
        raise AssertionError("unreachable")

    def logs(self, stream: bool = False, follow: bool = False, **kwargs):
        if not stream:
            return self.output
        return self._follow()

    def _follow(self):
        yield self.output.splitlines(keepends=True)[0]  # then the stream never ends
        FOREVER.wait()

    def reload(self) -> None:
        self.attrs = {"State": self.states[min(self.reloads, len(self.states) - 1)]}
        self.reloads += 1

    def remove(self, force: bool) -> None:
        assert force
        self.removed = True


class FakeClient:
    def __init__(self, container: StuckContainer) -> None:
        self.container = container
        self.images = self
        self.containers = self

    def get(self, image: str) -> None:  # images.get: the image is here
        pass

    def run(self, **kwargs) -> StuckContainer:  # containers.run
        return self.container


@pytest.fixture(autouse=True)
def _short_grace(monkeypatch):
    monkeypatch.setattr(local_docker, "LOG_GRACE_S", 0.2)


def test_a_container_that_exited_before_the_wait_began_gives_its_exit_code_in_seconds(capsys):
    container = StuckContainer([{"Status": "exited", "ExitCode": 3}])
    start = time.monotonic()
    assert local_docker.run_container(FakeClient(container), "img:1", ["sh", "-c", "exit 3"], {}, timeout=60) == 3
    assert time.monotonic() - start < 5
    assert container.removed
    out = capsys.readouterr().out
    assert out.count("first line") == 1 and "second line" in out  # the stuck stream's rest from one bounded read


def test_a_container_that_exits_while_watched_gives_its_exit_code():
    running = {"Status": "running", "ExitCode": 0}
    container = StuckContainer([running, running, running, {"Status": "exited", "ExitCode": 0}])
    assert local_docker.run_container(FakeClient(container), "img:1", ["true"], {}, timeout=60) == 0
    assert container.reloads == 4 and container.removed


def test_a_container_past_its_deadline_fails_with_its_id_state_and_last_lines_and_is_removed():
    container = StuckContainer([{"Status": "running", "ExitCode": 0}])
    start = time.monotonic()
    with pytest.raises(local_docker.ContainerTimeout) as raised:
        local_docker.run_container(FakeClient(container), "img:1", ["sleep", "infinity"], {}, timeout=0.5)
    assert time.monotonic() - start < 5
    message = str(raised.value)
    assert "container feedc0ffee01 still running after 0.5 s" in message
    assert "img:1" in message and "first line" in message and "second line" in message
    assert container.removed


def test_the_deadline_comes_from_clipcite_container_timeout(monkeypatch):
    monkeypatch.delenv("CLIPCITE_CONTAINER_TIMEOUT", raising=False)
    assert local_docker.container_timeout() == local_docker.DEFAULT_TIMEOUT_S
    monkeypatch.setenv("CLIPCITE_CONTAINER_TIMEOUT", "90")
    assert local_docker.container_timeout() == 90
    container = StuckContainer([{"Status": "running", "ExitCode": 0}])
    monkeypatch.setenv("CLIPCITE_CONTAINER_TIMEOUT", "0.3")
    with pytest.raises(local_docker.ContainerTimeout, match="after 0.3 s"):
        local_docker.run_container(FakeClient(container), "img:1", ["sleep", "infinity"], {})
    monkeypatch.setenv("CLIPCITE_CONTAINER_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="CLIPCITE_CONTAINER_TIMEOUT"):
        local_docker.container_timeout()


@pytest.fixture
def silent_engine():
    """A unix socket that takes connections (the kernel's backlog) and never answers a byte: an engine that hangs."""
    folder = tempfile.mkdtemp(prefix="engine-", dir="/tmp")  # a short path: unix socket names are at most 107 bytes
    path = Path(folder) / "docker.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(64)
    try:
        yield f"unix://{path}"
    finally:
        server.close()
        with contextlib.suppress(OSError):
            path.unlink()
            Path(folder).rmdir()


def test_an_engine_that_never_answers_fails_the_task_in_seconds(silent_engine):
    client = docker.DockerClient(base_url=silent_engine, version="1.41", timeout=1)
    start = time.monotonic()
    with pytest.raises(local_docker.EngineNotAnswering, match="did not answer") as raised:
        local_docker.run_container(client, "img:1", ["true"], {}, timeout=60)
    assert time.monotonic() - start < 10
    assert "docker.sock" in str(raised.value) or "localhost" in str(raised.value)


def test_a_run_against_an_engine_that_never_answers_stops_at_its_first_call(silent_engine, monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", silent_engine)
    monkeypatch.setattr(local_docker, "API_TIMEOUT_S", 1)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="no Docker engine answers at unix://"):
        local_docker.docker_runner({}, tmp_path / "run")
    assert time.monotonic() - start < 10
