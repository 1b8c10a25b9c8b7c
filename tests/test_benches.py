"""Every bench in bench/ imports and runs in a smoke form (seconds), so none rots between the rare runs by hand.

``SMOKE`` names each bench's smoke run (or the test file that runs it); a bench added without one fails
:func:`test_every_bench_has_a_smoke_run`. The numbers a smoke run prints mean nothing: the point is that every path
of the bench still runs against today's library.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))  # the toy-world benches import each other by bare name, as when run as scripts

HELPERS = {"cite_step", "synthetic", "smoke"}  # modules the benches share, not benches
# bench -> this file's smoke test, or the test file that runs the bench's smoke form
SMOKE = {
    "toyworld_methods": "test_toyworld_methods_smoke",
    "toyworld_vld": "test_toyworld_vld_smoke",
    "toyworld_lr": "test_toyworld_lr_smoke",
    "gpu_bench": "tests/test_gpu_bench.py (--tiny)",
    "scale": "tests/test_scale_bench.py",
}


def benches() -> list[str]:
    return sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in HELPERS)


@pytest.mark.parametrize("name", benches())
def test_every_bench_imports(name):
    importlib.import_module(f"bench.{name}")  # a name the library no longer has fails here, not by hand months later


def test_toyworld_methods_smoke(tmp_path, capsys):
    from bench import toyworld_methods

    assert toyworld_methods.main(["--quick", "--smoke", "--out", str(tmp_path)]) == 0  # the README's command
    result = json.loads((tmp_path / "toyworld_methods.json").read_text())
    assert result["seeds"] == [1] and set(result["summary"]) == set(toyworld_methods.SMOKE_METHODS)
    assert set(result["summary"]["cite"]) == {"b2n", "xd"}
    assert (tmp_path / "toyworld_methods.png").stat().st_size > 0
    assert "Command: `python bench/toyworld_methods.py --quick --smoke`" in capsys.readouterr().out


def test_toyworld_vld_smoke(tmp_path):
    from bench import toyworld_vld

    assert toyworld_vld.main(["--smoke", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "toyworld_vld.json").read_text())["summary"]
    assert set(summary) == {"zero-shot", "eta=0", "batch eta=1", "classes eta=1"}
    assert (tmp_path / "toyworld_vld.png").stat().st_size > 0


def test_toyworld_lr_smoke(tmp_path, capsys):
    from bench import toyworld_lr

    assert toyworld_lr.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "rrc-default" in line]
    assert len(rows) == 1, rows  # one lr, one crop setting
