"""Every bench in bench/ imports and runs in a smoke form (seconds), so none rots between the rare runs by hand.

``SMOKE`` names each bench's smoke run (or the test file that runs it); a bench added without one fails
:func:`test_every_bench_has_a_smoke_run`. The numbers a smoke run prints mean nothing: the point is that every path
of the bench runs against the library as it is now in the tree.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"

from bench.smoke import SMOKE_OVERRIDES  # noqa: E402

HELPERS = {"cite_step", "synthetic", "smoke"}  # modules the benches share, not benches
# bench -> this file's smoke test, or the test file that runs the bench's smoke form
SMOKE = {
    "toyworld_methods": "test_toyworld_methods_smoke",
    "toyworld_vld": "test_toyworld_vld_smoke",
    "toyworld_lr": "test_toyworld_lr_smoke",
    "gpu_bench": "tests/integration/test_gpu_bench.py (--tiny)",
    "scale": "tests/integration/test_scale_bench.py",
    "startup": "test_startup_smoke",
    "teacher_cache": "test_teacher_cache_smoke",
    "input_path": "test_input_path_smoke",
    "s3_faults": "test_s3_faults_smoke",
    "peer_open_clip_train": "test_peer_open_clip_train_smoke",
    "serve_load": "tests/integration/test_serving.py (--url of its server, --smoke)",
    "registry_stack": "tests/integration/test_mlflow_registry.py (its registry checks on that stack)",
    "containers": "tests/containers (--smoke, the container tier: make test-containers)",
}


def benches() -> list[str]:
    return sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in HELPERS)


@pytest.mark.parametrize("name", benches())
def test_every_bench_imports(name):
    importlib.import_module(f"bench.{name}")  # a name the library lacks fails here, not by hand months later


def test_every_bench_has_a_smoke_run():
    missing = sorted(set(benches()) - set(SMOKE))
    assert not missing, f"bench(es) without a smoke run: {missing}; give each a --smoke (seconds) and a test here"
    for name, where in SMOKE.items():
        if where.startswith("tests/"):
            path = ROOT / where.split(" ")[0]
            assert path.exists(), where
            if path.is_file():  # the test file runs this bench: it names it
                text = path.read_text()
                assert f"bench import {name}" in text or f"bench/{name}.py" in text or f"bench.{name}" in text, where
        else:
            assert where in globals(), where


def test_every_bench_bench_readme_shows_exists_and_has_a_smoke_run():
    shown = set(re.findall(r"-m bench\.(\w+)", (BENCH / "README.md").read_text()))
    assert shown - set(benches()) - HELPERS == set(), "bench/README.md names a bench that is not in bench/"
    assert shown & set(benches()) <= set(SMOKE)


def test_toyworld_methods_smoke(tmp_path, capsys, caplog):
    from bench import toyworld_methods

    assert toyworld_methods.main(["--quick", "--smoke", "--out", str(tmp_path)]) == 0  # the README's command
    result = json.loads((tmp_path / "toyworld_methods.json").read_text())
    assert result["seeds"] == [1] and set(result["summary"]) == set(toyworld_methods.SMOKE_METHODS)
    assert set(result["summary"]["cite"]) == {"b2n", "xd"}
    assert (tmp_path / "toyworld_methods.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "Command: `python -m bench.toyworld_methods --quick --smoke`" in out
    assert "| method | train s (b2n) | train s (xd) | trainable parameters | artefact |" in out  # what each costs
    for candidates in ("cite, lora, linear_probe", "all methods"):  # the rule's pick per protocol beside test's best
        picks = result["selection"][candidates]
        assert set(picks) == {"b2n", "xd"} and {p["picked"] for p in picks["b2n"].values()} <= set(result["summary"])
    saved = json.loads((tmp_path / "seed1" / "results.json").read_text())
    assert saved["settings"] == ["train.epochs=5", *SMOKE_OVERRIDES]  # reused only by a run with these settings
    assert set(saved["results"]) == set(toyworld_methods.SMOKE_METHODS)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bench"):
        assert toyworld_methods.main(["--quick", "--smoke", "--out", str(tmp_path)]) == 0
    assert "seed 1: reusing" in caplog.text and "seed 1 b2n" not in caplog.text  # nothing trained again


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


def test_startup_smoke(capsys):
    from bench import startup

    assert startup.main(["--smoke"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == startup.SMOKE_MODULES
    assert rows[1].split()[-1] == "-"  # sample-splits imports none of the heavy modules


def test_teacher_cache_smoke(capsys):
    from bench import teacher_cache

    result = teacher_cache.main(["--smoke"])
    assert result["ratio_cpu"] > 0 and set(result["wall"]) == {"cache", "online", "teacher forward"}
    assert "step time ratio cache/online" in capsys.readouterr().out


def test_input_path_smoke(capsys):
    from bench import input_path

    assert input_path.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert out.count("last batch identical") == 3 and "identical pixels 8/8" in out
    assert out.count("predictions identical") == 2  # predict vs the naive loop, and the 2 models' one pass


@pytest.mark.slow  # two runs of the S3 chain (clean and faulty): about a minute on 2 busy cores
def test_s3_faults_smoke(tmp_path, capsys):
    from bench import s3_faults

    assert s3_faults.main(["--smoke", "--out", str(tmp_path)]) == 0  # 0: the faulty run wrote what the clean one did
    (row,) = json.loads((tmp_path / "s3_faults.json").read_text())
    assert row["identical"] and row["injected"] > 0 and row["retried"] == row["injected"], row


@pytest.mark.slow  # trains and evaluates the toy CLIP on one shot: half a minute, a minute with open_clip_train
def test_peer_open_clip_train_smoke(tmp_path, capsys):
    """With bench/requirements-peer.txt installed, the whole bench on a smoke split; without it (as in make test's
    venv), the clipcite half and open_clip_train's parser reading the flags the peer would get."""
    from bench import peer_open_clip_train as peer

    assert peer.main(["--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    if peer.peer_installed():
        assert (tmp_path / "peer_open_clip_train.md").is_file() and "Throughput goal" in out
    else:
        assert "open_clip_train's flags parse: 1 epoch(s), batch 8" in out
