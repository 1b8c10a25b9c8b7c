"""`make setup` with the wrong Python: refused before anything is installed, and a .venv that another Python made is
rebuilt instead of reused. Run on a copy of the Makefile with stand-in interpreters (a shell script that answers the
version query and makes a venv of itself), so nothing is downloaded and the real .venv is never touched."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKE_PYTHON = """#!/bin/sh
case "$1" in
  -c) echo {version} ;;
  -m) if [ "$2" = venv ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; else echo "pip $*" >> "$(dirname "$0")/../../pip.log"; fi ;;
esac
"""  # noqa: E501


@pytest.fixture
def repo(tmp_path) -> Path:
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    requirements = ("requirements.txt", "requirements-pipeline.txt", "requirements-dev.txt", "requirements-checkov.txt")
    for name in (*requirements, "requirements-kfp-oldest.txt"):
        (tmp_path / name).write_text("")
    (tmp_path / "pyproject.toml").write_text("")
    for version in ("3.11", "3.12"):
        fake = tmp_path / "bin" / f"python{version}"
        fake.parent.mkdir(exist_ok=True)
        fake.write_text(FAKE_PYTHON.format(version=version))
        fake.chmod(0o755)
    return tmp_path


def make(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=repo, capture_output=True, text=True, timeout=60)


def test_the_makefile_wants_the_python_pyproject_requires():
    requires = re.search(r'requires-python = ">=(\d+\.\d+),<', (ROOT / "pyproject.toml").read_text())[1]
    assert re.search(r"^PYTHON_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)[1] == requires


def test_the_wrong_python_is_refused_before_anything_is_installed(repo):
    out = make(repo, "setup", f"PYTHON={repo}/bin/python3.12")
    assert out.returncode != 0
    assert "is Python 3.12; clipcite needs Python 3.11" in out.stderr and "make PYTHON=python3.11" in out.stderr
    assert not (repo / ".venv").exists() and not (repo / "pip.log").exists()


def test_a_venv_made_by_another_python_is_rebuilt(repo):
    subprocess.run([repo / "bin" / "python3.12", "-m", "venv", repo / ".venv"], check=True)
    (repo / ".venv" / ".installed").touch()  # even one that looks complete
    out = make(repo, "setup", f"PYTHON={repo}/bin/python3.11")
    assert out.returncode == 0, out.stdout + out.stderr
    assert ".venv was made by Python 3.12, not 3.11: removing it" in out.stdout
    version = subprocess.run([repo / ".venv" / "bin" / "python", "-c", ""], capture_output=True, text=True).stdout
    assert version.strip() == "3.11" and "install -q -r requirements.txt" in (repo / "pip.log").read_text()
    again = make(repo, "setup", f"PYTHON={repo}/bin/python3.12")  # a good .venv needs no PYTHON at all
    assert again.returncode == 0 and "removing" not in again.stdout and "is up to date" in again.stdout
