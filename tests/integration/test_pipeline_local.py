"""The whole DAG through kfp.local on tiny data; a bad input fails at its step, the fixed rerun reuses the cache,
and weights replaced under the same path get a new teacher cache."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from safetensors.torch import load_file, save_file  # noqa: E402

from clipcite.model.identity import resolve_checkpoint  # noqa: E402
from clipcite.pipeline import cli  # noqa: E402
from clipcite.toyworld.generate import write_world  # noqa: E402

pytestmark = pytest.mark.slow  # see pyproject.toml: `make test-fast` leaves these out

FAST = {"train.epochs": 1, "eval.batch_size": 64}
NO_TRACKING = {"tracking_uri": "off"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "table"
    write_world(str(out), seed=1, counts={"train": 3, "val": 1, "test": 2}, domains=("photo", "sketch"))
    return out


def test_whole_dag_runs_locally_and_evaluates_every_domain(world, tmp_path):
    """Run as a person runs it, ``python pipeline.py run`` without -v: the default output is one line per step (each
    evaluate with its domain), then the summary and where things are; nothing else (warnings, libraries' INFO
    lines) reaches the terminal, all of it goes to the log file."""
    params = ["data_uri=" + str(world), "shots=2", "overrides=" + json.dumps(FAST), "tracking_uri=off"]
    command = [sys.executable, "pipeline.py", "run", "--out", str(tmp_path), *[f"--param={p}" for p in params]]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stderr == "", done.stderr[-3000:]
    lines = done.stdout.splitlines()
    steps = [re.sub(r"^\[\s*\d+s\] ", "", line) for line in lines if re.match(r"^\[\s*\d+s\] ", line)]
    assert lines[: len(steps)] == [line for line in lines if line.startswith("[")]  # the step lines come first
    tasks = ["snapshot", "sample-splits", "cache-teacher", "finetune", "evaluate photo", "evaluate sketch"]
    tasks += ["register", "finish-run"]
    assert sorted(steps) == sorted([f"{t} ..." for t in tasks] + [f"{t}: done" for t in tasks]), steps
    rest = lines[len(steps) :]
    assert rest[0].startswith("# clipcite: cite (alpha=0.5), 2 shots, seed 1, base2new, data ")
    table = [line for line in rest if line.startswith("|")]
    assert table[0] == "| domain | model | Base | New | HM |" and len(table) == 2 + 3 * 2  # photo, sketch, mean
    where = [line for line in rest[1:] if line and not line.startswith("|")]
    assert [line.split(":")[0] for line in where] == ["registration record", "report", "log"], where
    record, summary, log = (ROOT / line.split(": ", 1)[1] for line in where)  # relative to the cwd, or absolute
    assert "Executing task" in log.read_text()  # what the terminal did not get is in the log
    result = {"metrics": json.loads((record / "metrics.json").read_text()), "record": record, "summary": summary}
    metrics = result["metrics"]
    assert set(metrics["domains"]) == {"photo", "sketch"}
    for domain in ("photo", "sketch"):
        for model in ("zeroshot", "finetuned"):
            assert {"base", "new", "hm"} <= set(metrics["domains"][domain][model])
    assert len(metrics["sets"]) == 4  # base and new of each domain, gathered from two evaluate tasks
    summary = result["summary"].read_text()
    assert "| photo (trained on) | finetuned |" in summary and "| mean of sketch | finetuned |" in summary
    assert (result["record"] / "registration.json").is_file()


def _executed(result: dict) -> set[str]:
    """The steps this run executed: a cache hit writes nothing under the run's own root (its outputs stay where the
    cached run wrote them). Read from disk, as kfp.local's "cache hit" log lines do not reliably reach pytest's
    capture when several pipelines run in one process."""
    return {p.name for p in result["record"].parents[1].iterdir()}


def test_bad_input_fails_at_its_step_and_the_fixed_rerun_reuses_the_cache(world, tmp_path, capfd):
    checkpoint = tmp_path / "weights" / "toyclip.safetensors"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"this is not a checkpoint")
    params = {"data_uri": str(world), "shots": 2, "pretrained": str(checkpoint), "overrides": FAST, **NO_TRACKING}
    with pytest.raises(RuntimeError, match="cache-teacher"):
        cli.run_local(params, tmp_path / "run")
    captured = capfd.readouterr()  # read once: a second read returns only what came after the first
    assert f"{checkpoint}: cannot load checkpoint" in captured.out + captured.err

    shutil.copy(resolve_checkpoint("clipcite:toyworld/toyclip.safetensors"), checkpoint)  # the input is fixed
    result = cli.run_local(params, tmp_path / "run")
    executed = _executed(result)
    assert "sample-splits" not in executed  # reused from the failed run's cache
    assert "cache-teacher" in executed  # a failed step is never cached
    assert set(result["metrics"].domains) == {"photo", "sketch"}

    # New weights under the same path (a re-exported checkpoint): the data is unchanged, so the splits come from
    # the cache, but the teacher cache must be rebuilt; serving the old one fails finetune's identity check.
    state = load_file(checkpoint)
    state["logit_scale"] = state["logit_scale"] + 0.5
    save_file(state, str(checkpoint))
    result = cli.run_local(params, tmp_path / "run")
    executed = _executed(result)
    assert "sample-splits" not in executed and "cache-teacher" in executed
    assert set(result["metrics"].domains) == {"photo", "sketch"}
