"""The declared layers (pyproject.toml's import-linter contracts, run by `make lint`) hold for the tree, and an import
that runs back up a layer or closes a circle fails them; tests and benches reach the KFP side without sys.path edits."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)},
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package and its contracts, to plant imports in."""
    shutil.copytree(
        ROOT / "clipcite", tmp_path / "clipcite", ignore=shutil.ignore_patterns("__pycache__", "*.safetensors")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_tree_keeps_every_contract(tree):
    done = lint(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "planted", "broken"),
    [
        pytest.param(
            "data/prompts.py",
            "from clipcite.steps import select",
            (
                "layers: entry points, steps, the ML core, infrastructure BROKEN",
                "clipcite.data.prompts -> clipcite.steps.select",
            ),
            id="an upward import breaks the layers",
        ),
        pytest.param(
            "data/table.py",
            "from clipcite.data import rows",
            ("no import circles among the modules of any package BROKEN",),
            id="a circle between two modules breaks the acyclic contract",
        ),
    ],
)
def test_a_planted_import_breaks_its_contract(tree, module, planted, broken):
    path = tree / "clipcite" / module
    path.write_text(path.read_text() + f"\n{planted}  # noqa\n")
    done = lint(tree)
    assert done.returncode != 0
    for line in broken:
        assert line in done.stdout


def test_no_test_or_bench_edits_sys_path():
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("tests", "bench")
        for path in (ROOT / folder).rglob("*.py")
        if re.search(r"sys\.path\.insert\(", path.read_text())
    ]
    assert offenders == []


def test_each_hand_off_file_is_named_in_clipcite_records_alone():
    """A file one step writes and another reads is named once, by its record; a literal elsewhere in the package would
    be a second spelling that can drift."""
    from clipcite import records

    names = {cls.FILE for cls in vars(records).values() if isinstance(cls, type) and getattr(cls, "FILE", None)}
    names |= {records.WEIGHTS_FILE, records.OPENCLIP_CONFIG_FILE, records.HEAD_FILE, records.LORA_FILE}
    names.add(records.CURVES_FILE)
    assert {"manifest.json", "clipcite.json", "train_summary.json", "metrics.json", "registration.json"} <= names
    found = []
    for path in sorted((ROOT / "clipcite").rglob("*.py")):
        if path.name == "records.py" and path.parent.name == "clipcite":
            continue
        text = path.read_text()
        found += [f"{path.relative_to(ROOT)}: {name}" for name in names if f'"{name}"' in text or f"'{name}'" in text]
    assert not found, found
