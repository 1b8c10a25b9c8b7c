"""``pipeline.py run --runner docker``: the DAG through kfp.local's DockerRunner, each step in its image, against a
Docker engine or podman's Docker API (``podman system service``; ``DOCKER_HOST`` names its socket).

Two things kfp.local (2.17.3) does not do for this pipeline, done here:

- **A failed container fails its task.** kfp's ``run_docker_container`` starts each container with
  ``auto_remove=True``, then asks for its exit code. The engine may have removed the container by then: podman
  answers 500 "no such container" (the run dies on an APIError), and where the answer is a 404 kfp returns exit code
  0, so a step that failed counts as a success. :func:`run_container` keeps the container until its exit code is
  read, then removes it.
- **The steps see the run's local files.** DockerRunner mounts only the pipeline root; the data, the stores
  (teacher, baseline, checkpoints) and a sqlite tracking store are local paths too: each is mounted at the same path.
  Containers run as the invoking user, so what they write stays the user's (the images' uid 10001 is what a
  cluster runs; tests/containers checks the steps under it).

- **No wait on the engine is unbounded.** kfp follows the logs (the SDK turns the socket's timeout off for a
  stream) and then calls ``container.wait()`` (the SDK sends it with no timeout at all); on podman 4.3's Docker API
  either can block for good on a container that has already exited (a follow that never ends, a wait that missed
  the exit), and the run hangs with the container sitting there ``Exited``. :func:`run_container` reads the logs in
  a daemon thread and polls the container's state (``Status``, ``ExitCode``) until a deadline, so an exit is seen
  whether it came before or after the look; every other call has the client's socket timeout. A step still running
  at its deadline (``CLIPCITE_CONTAINER_TIMEOUT`` seconds, default :data:`DEFAULT_TIMEOUT_S`) fails its task with
  the container's id, state and last output lines, and the container is removed; an engine that does not answer
  fails it with the engine's address.

podman's Docker API ignores GPU requests: the GPU steps run on CPU there (``device: auto``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

# The host's settings a step needs, passed into every container (the manifests inject the same on a cluster).
PASSED_ENV_PREFIXES = ("MLFLOW_", "AWS_", "CLIPCITE_GIT_SHA")

# How long one step's container may run (CLIPCITE_CONTAINER_TIMEOUT overrides it): make run's DAG takes minutes a
# step; a full-size local run stays well under this. The tier (make test-containers) sets it lower.
DEFAULT_TIMEOUT_S = 4 * 3600
# The socket timeout of each call on the engine (the SDK's own default): a silent engine raises instead of hanging.
API_TIMEOUT_S = 60
# After the exit, how long the log stream may take to end before it is closed and the logs are read once instead.
LOG_GRACE_S = 5.0
LAST_LINES = 20
# The states of a container that has stopped (Docker's; podman's Docker API maps its own onto them).
EXITED = ("exited", "dead", "stopped")


class ContainerTimeout(RuntimeError):
    """A step's container ran past its deadline (it is removed)."""


class EngineNotAnswering(RuntimeError):
    """The engine did not answer a call within the client's socket timeout, or could not be reached."""


def docker_runner(params: dict, out: Path):
    """A ``kfp.local.DockerRunner`` with the run's local paths mounted, the host's MLflow and S3 settings passed on,
    and :func:`run_container` in place of kfp's."""
    from kfp import local
    from kfp.local import docker_task_handler

    import docker

    try:
        docker.from_env(timeout=API_TIMEOUT_S).ping()
    except (docker.errors.DockerException, *_request_errors()) as e:
        where = os.environ.get("DOCKER_HOST", "the default socket /var/run/docker.sock")
        raise RuntimeError(
            f"no Docker engine answers at {where} ({e}): start Docker, or podman's Docker API "
            "(`podman system service --time=0 unix:///run/podman/podman.sock &` and "
            "`export DOCKER_HOST=unix:///run/podman/podman.sock`)"
        ) from e
    env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV_PREFIXES)}
    docker_task_handler.run_docker_container = _with_env(env)
    mounts = [docker.types.Mount(str(p), str(p), type="bind") for p in shared_paths(params, out)]
    return local.DockerRunner(mounts=mounts, user=f"{os.getuid()}:{os.getgid()}")


def shared_paths(params: dict, out: Path) -> list[Path]:
    """The local folders the steps read or write besides the pipeline root: the output folder (data, stores, caches),
    every parameter that is a local path, the folder of a sqlite tracking store. Nested ones are left out."""
    found = [out.resolve()]
    for value in params.values():
        text = str(value) if isinstance(value, str | Path) else ""
        if text.startswith("sqlite:///"):
            found.append(Path(text.removeprefix("sqlite://")).parent)
        elif text.startswith("/") or text.startswith("file://"):
            path = Path(text.removeprefix("file://"))
            found.append(path if path.is_dir() else path.parent)
    return _outermost(p.resolve() for p in found)


def _outermost(paths: Iterable[Path]) -> list[Path]:
    kept: list[Path] = []
    for path in sorted(set(paths), key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(k) for k in kept):
            path.mkdir(parents=True, exist_ok=True)
            kept.append(path)
    return kept


def _with_env(env: dict[str, str]):
    def run(client, image: str, command: list[str], volumes: dict, **run_args) -> int:
        run_args["environment"] = {**env, **(run_args.get("environment") or {})}  # the task's own env wins
        return run_container(client, image, command, volumes, **run_args)

    return run


def container_timeout() -> float:
    """A step container's time limit in seconds: ``CLIPCITE_CONTAINER_TIMEOUT``, else :data:`DEFAULT_TIMEOUT_S`."""
    text = os.environ.get("CLIPCITE_CONTAINER_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise ValueError(f"CLIPCITE_CONTAINER_TIMEOUT={text!r}: a number of seconds > 0")
    return seconds


def run_container(
    client, image: str, command: list[str], volumes: dict, *, timeout: float | None = None, **run_args
) -> int:
    """kfp's ``run_docker_container`` without its race and without its unbounded waits: the container is removed
    only after its exit code is read, an exit code that cannot be read fails the task instead of passing it, and a
    container still running after ``timeout`` seconds (:func:`container_timeout` when None) fails it with
    :class:`ContainerTimeout`."""
    limit = container_timeout() if timeout is None else timeout
    deadline = time.monotonic() + limit
    engine = getattr(getattr(client, "api", None), "base_url", "the engine")
    with _answered(engine, "the image lookup"):
        _ensure_image(client, image)
    run_args.pop("auto_remove", None)
    with _answered(engine, "starting the container"):
        container = client.containers.run(
            image=image, command=command, detach=True, stdout=True, stderr=True, volumes=volumes, **run_args
        )
    logs = _Logs(container)
    try:
        code = wait_for_exit(container, deadline, engine=engine)
        logs.finish(grace=LOG_GRACE_S)
        return code
    except ContainerTimeout as e:
        logs.finish(grace=min(1.0, LOG_GRACE_S))
        raise ContainerTimeout(
            f"{e} after {limit:g} s (CLIPCITE_CONTAINER_TIMEOUT; image {image}, command {command}), removed; "
            + logs.describe()
        ) from None
    finally:
        logs.stop()
        _remove(container)


def wait_for_exit(container, deadline: float, *, engine: str = "the engine") -> int:
    """The exit code of ``container`` once its state says it stopped, asked until ``deadline`` (``time.monotonic``).
    The state is the engine's record, so an exit that happened before the first look is seen like a later one (a
    ``wait`` call can miss it on podman 4.3); each look has the client's socket timeout. Past the deadline
    :class:`ContainerTimeout` names its id and state (:func:`run_container` then removes it)."""
    pause = 0.05
    while True:
        with _answered(engine, f"the state of container {container.id[:12]}"):
            container.reload()
        state = container.attrs.get("State") or {}
        status = str(state.get("Status", "")).lower()
        if status in EXITED:
            return int(state["ExitCode"])
        now = time.monotonic()
        if now >= deadline:
            raise ContainerTimeout(f"container {container.id[:12]} still {status or 'in an unknown state'}")
        time.sleep(min(pause, deadline - now))
        pause = min(pause * 2, 1.0)


class _Logs:
    """A container's output printed as it comes, by a daemon thread that follows the log stream: nothing waits on
    the stream without a bound (on podman 4.3 a follow may never end). :meth:`finish` gives it a grace period after
    the exit, then closes it and prints what it had not from one bounded read of the logs."""

    def __init__(self, container) -> None:
        self.container = container
        self.printed = 0
        self.tail = bytearray()
        self.stopped = False
        self.error: BaseException | None = None
        self.stream = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._follow, name=f"logs-{container.id[:12]}", daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        try:
            self.stream = self.container.logs(stream=True, follow=True)
            for chunk in self.stream:
                with self.lock:
                    if self.stopped:
                        return
                    self._emit(chunk)
        except Exception as e:  # the stream broke or was closed: finish() reads what is left
            self.error = e

    def _emit(self, chunk: bytes) -> None:
        print(chunk.decode(errors="replace"), end="")
        self.printed += len(chunk)
        self.tail = (self.tail + chunk)[-16384:]

    def stop(self) -> None:
        """Nothing more is printed from the stream; closing it (a ``CancellableStream``) ends the thread."""
        with self.lock:
            self.stopped = True
        with contextlib.suppress(Exception):
            self.stream.close()

    def finish(self, grace: float) -> None:
        """After the exit: the stream's end, within ``grace`` seconds, or the rest of the output from one read."""
        self.thread.join(grace)
        ended = not self.thread.is_alive() and self.error is None
        self.stop()
        if ended:
            return  # the stream ended with the container: everything was printed
        with contextlib.suppress(Exception):  # bounded by the client's socket timeout
            rest = self.container.logs(stdout=True, stderr=True, stream=False)[self.printed :]
            with self.lock:
                self._emit(rest)

    def describe(self) -> str:
        lines = self.tail.decode(errors="replace").splitlines()[-LAST_LINES:]
        if not lines:
            return "it printed nothing"
        return f"its last {len(lines)} output lines:\n" + "\n".join(lines)


@contextlib.contextmanager
def _answered(engine: str, what: str) -> Iterator[None]:
    """A call on the engine that times out or cannot connect raises :class:`EngineNotAnswering`."""
    try:
        yield
    except _request_errors() as e:
        raise EngineNotAnswering(
            f"the container engine at {engine} did not answer ({what}): {e}. Is it running? (podman: "
            "`podman system service`, with DOCKER_HOST naming its socket)"
        ) from e


def _request_errors() -> tuple[type[BaseException], ...]:
    import requests

    return (requests.exceptions.ConnectionError, requests.exceptions.Timeout)


def _remove(container) -> None:
    """Remove the container (killing it if it runs); an engine that refuses or does not answer leaves it there."""
    import docker

    with contextlib.suppress(docker.errors.APIError, *_request_errors()):
        container.remove(force=True)


def _ensure_image(client, image: str) -> None:
    import docker

    tagged = image if ":" in image.rsplit("/", 1)[-1] or "@" in image else f"{image}:latest"
    try:
        client.images.get(tagged)
        return
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.pull(tagged)
    except docker.errors.APIError as e:
        raise RuntimeError(
            f"image {tagged} is not on this machine and cannot be pulled ({e}): build it with `make images` "
            "(`make images CONTAINER_ENGINE=podman ...` for podman; see docs/containers.md)"
        ) from e
