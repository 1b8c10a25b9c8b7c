"""Dockerfiles: linted, installing exactly what CI installs, non-root, no credentials."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            out[name.lower()] = version
    return out


def test_hadolint_passes():
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_the_ci_requirements_as_non_root_without_secrets(dockerfile):
    text = dockerfile.read_text()
    makefile = (ROOT / "Makefile").read_text()
    runtime = pins(ROOT / "requirements.txt")
    assert f"docker/{dockerfile.name}," in makefile  # make images builds it (build_image DOCKERFILE,NAME,ARGS)
    if dockerfile.name == "Dockerfile.mlflow":  # the tracking server: the client's MLflow and boto3
        server = pins(ROOT / "requirements-mlflow-server.txt")
        assert "-r requirements-mlflow-server.txt" in text
        assert {k: server[k] for k in ("mlflow", "boto3")} == {k: runtime[k] for k in ("mlflow", "boto3")}
    else:
        for requirements in ("requirements.txt", "requirements-pipeline.txt"):
            assert f"-r {requirements}" in text and f"-r {requirements}" in makefile
    for package, version in re.findall(r"\b(torch|torchvision)==([\w.]+)", text):
        assert runtime[package] == version, f"{dockerfile.name} pins {package}=={version}, CI {runtime[package]}"
    assert re.search(r"^USER 10001$", text, re.M)
    assert not re.search(r"(?i)^(ENV|ARG).*(secret|password|token|access_key)", text, re.M)


def test_dockerignore_keeps_the_context_to_what_the_images_copy():
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    for dockerfile in DOCKERFILES:
        for copied in re.findall(r"^COPY (.+) \S+$", dockerfile.read_text(), re.M):
            assert set(copied.split()) <= allowed, copied


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_base_is_a_build_argument_defaulting_to_the_slim_image(dockerfile):
    """Machines that cannot pull python:3.11.7-slim-bookworm build on docker/base-image.sh's base instead."""
    text = dockerfile.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11\.7-slim-bookworm\n(#.*\n)?FROM \$\{BASE_IMAGE\}$", text, re.M)


def test_torch_comes_from_a_build_argument_index():
    cpu = (ROOT / "docker" / "Dockerfile.cpu").read_text()
    cuda = (ROOT / "docker" / "Dockerfile.cuda").read_text()
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in cpu
    assert "ARG TORCH_INDEX=https://pypi.org/simple" in cuda
    # The two images share their layers up to the requirements when built with one index (CI: the package index).
    shared = lambda text: text[text.index("FROM") : text.index("COPY pyproject.toml")].replace(  # noqa: E731
        "https://download.pytorch.org/whl/cpu", "INDEX"
    )
    assert shared(cpu) == shared(cuda).replace("https://pypi.org/simple", "INDEX")


def test_podman_setup_writes_a_config_this_machine_can_run(tmp_path):
    """docker/podman/setup.sh: runc, cgroupfs, the host network, and ulimits no higher than this machine grants."""
    import resource
    import tomllib

    out = tmp_path / "containers.conf"
    env = {**os.environ, "PODMAN_SETUP_INSTALL": "0"}  # the file only: make test-containers installs podman
    subprocess.run([ROOT / "docker" / "podman" / "setup.sh", out], check=True, capture_output=True, env=env)
    conf = tomllib.loads(out.read_text())
    assert conf["engine"] == {"runtime": "runc", "cgroup_manager": "cgroupfs", "events_logger": "file"}
    assert conf["containers"]["netns"] == "host"
    limits = dict(item.split("=") for item in conf["containers"]["default_ulimits"])
    nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert int(limits["nofile"].split(":")[1]) <= (nofile_hard if nofile_hard > 0 else 1 << 30)
    assert int(limits["nproc"].split(":")[1]) <= int(Path("/proc/sys/kernel/pid_max").read_text())
