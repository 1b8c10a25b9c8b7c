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

podman's Docker API ignores GPU requests: the GPU steps run on CPU there (``device: auto``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

# The host's settings a step needs, passed into every container (the manifests inject the same on a cluster).
PASSED_ENV_PREFIXES = ("MLFLOW_", "AWS_", "CLIPCITE_GIT_SHA")


def docker_runner(params: dict, out: Path):
    """A ``kfp.local.DockerRunner`` with the run's local paths mounted, the host's MLflow and S3 settings passed on,
    and :func:`run_container` in place of kfp's."""
    from kfp import local
    from kfp.local import docker_task_handler

    import docker

    try:
        docker.from_env().ping()
    except docker.errors.DockerException as e:
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


def run_container(client, image: str, command: list[str], volumes: dict, **run_args) -> int:
    """kfp's ``run_docker_container`` without its race: the container is removed only after its exit code is read,
    and an exit code that cannot be read fails the task instead of passing it."""
    import docker

    _ensure_image(client, image)
    run_args.pop("auto_remove", None)
    container = client.containers.run(
        image=image, command=command, detach=True, stdout=True, stderr=True, volumes=volumes, **run_args
    )
    try:
        for chunk in container.logs(stream=True, follow=True):
            print(chunk.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        with contextlib.suppress(docker.errors.APIError):
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
