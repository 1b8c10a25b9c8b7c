"""Dockerfiles: linted, installing exactly what CI installs, non-root, no credentials."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
    assert f"-f docker/{dockerfile.name}" in makefile  # make images builds it
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
