"""The README's local commands, run as a new user runs them, so the README cannot drift from what works.

Every command line of every ``bash`` block, in README order, runs in one fresh shell in an empty working directory
(with ``.venv`` and ``pipeline.py`` linked in, as in a checkout): no ``VIRTUAL_ENV``, no ``.venv/bin`` on ``PATH``
and no MLflow, S3 or CLIPCITE settings, so only the README's own ``source .venv/bin/activate`` makes ``python``,
``clipcite`` and ``mlflow`` work. A command that would take minutes gets tiny settings appended (``RUN`` says how
and why; a bench gets its ``--smoke`` form, tests/test_benches.py); a command that needs a cluster or the team's
registry is in ``NOT_RUN`` with the reason. A README command that neither covers fails the test.
"""

import os
import re
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # see pyproject.toml: `make test-fast` leaves these out

ROOT = Path(__file__).resolve().parents[1]
# The tiny table has one image per class, domain and split; evaluating one domain of four saves a process per step.
TINY_CHAIN = "--set splits.shots=1 --set train.epochs=1 --set 'splits.eval_domains=[photo]'"

# command prefix -> (arguments appended, how that shrinks it)
RUN = {
    "source .venv/bin/activate": ("", "as written: what makes every later command work"),
    "python -m clipcite.toyworld.zeroshot": ("--per-class 1", "1 test image per class and domain instead of 20"),
    "python -m clipcite.toyworld.generate": ("--train 1 --val 1 --test 1", "1 image per class, domain, split"),
    "clipcite sample-splits": (TINY_CHAIN, "1 shot instead of 16"),
    "clipcite cache-teacher": (TINY_CHAIN, "1 shot, 1 epoch of crops instead of 16 shots, 20 epochs"),
    "clipcite finetune": (TINY_CHAIN, "1 shot, 1 epoch instead of 16 shots, 20 epochs"),
    "clipcite evaluate": (TINY_CHAIN, "1 test image per class, one domain of four"),
    "mlflow ui": ("--host 127.0.0.1 --port {port}", "a free loopback port; started, asked /health, stopped"),
    "python pipeline.py run": (
        "--param data_uri=runs/default/table --param shots=1 "
        '--param \'overrides={"train.epochs": 1, "splits.eval_domains": ["photo"]}\'',
        "the chain's tiny table, 1 shot, 1 epoch, one evaluate task instead of the toy world, 8 shots, 5 epochs, four",
    ),
    "clipcite champion clipcite": ("", "as written: reads the ./mlflow.db the run above wrote"),
    "python bench/toyworld_methods.py": ("--smoke", "the bench's smoke form: a tiny world, 1 shot, 1 epoch, 2 methods"),
    "python pipeline.py compile": ("", "as written"),
}
NOT_RUN = {
    "make run": "setup, then `python pipeline.py run`, which runs here (this test runs inside the set-up .venv)",
    "make test": "the test suite this test is part of",
    "python pipeline.py submit": "needs a Kubeflow Pipelines server (tests/test_pipeline.py mocks its client)",
    "python pipeline.py schedule": "needs a Kubeflow Pipelines server (tests/test_pipeline.py mocks its client)",
    "clipcite champion pets": "needs the team's registry with model pets (tests/test_mlflow_registry.py rolls back)",
}


def readme_commands() -> list[tuple[int, str]]:
    """(line number, command) for every command line of the README's bash blocks, continuation lines joined and
    trailing comments dropped."""
    commands, fence, bash, pending = [], False, False, None
    for number, line in enumerate((ROOT / "README.md").read_text().splitlines(), 1):
        if line.startswith("```"):
            fence, bash = not fence, line == "```bash" and not fence
            continue
        if not bash:
            continue
        start, text = (pending[0], f"{pending[1]} {line.strip()}") if pending else (number, line.strip())
        pending = (start, text[:-1].rstrip()) if text.endswith("\\") else None
        command = re.sub(r"\s+#\s.*$", "", text).strip()
        if not pending and command and not command.startswith("#"):
            commands.append((start, command))
    return commands


def rule(command: str) -> str:
    matches = [prefix for prefix in (*RUN, *NOT_RUN) if command.startswith(prefix)]
    assert len(matches) == 1, f"README command {command!r}: add it to RUN (with tiny settings) or NOT_RUN (why)"
    return matches[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script(commands: list[tuple[int, str]], port: int) -> str:
    lines = ["set -euo pipefail", "TIMEFORMAT='  (%U s user + %S s sys, %R s wall)'"]
    for number, command in commands:
        prefix = rule(command)
        if prefix in NOT_RUN:
            continue
        full = f"{command} {RUN[prefix][0].replace('{port}', str(port))}".strip()
        lines.append(f"echo {shlex.quote(f'+ README.md:{number}: {full}')}")
        if prefix == "mlflow ui":  # a server: start it in its own process group, wait for /health, stop the group
            health = f"import urllib.request as r; r.urlopen('http://127.0.0.1:{port}/health', timeout=2)"
            lines += [
                f"setsid {full} > mlflow-ui.log 2>&1 &",
                "server=$! up=0",
                f'for _ in $(seq 90); do if python -c "{health}" 2>/dev/null; then up=1; break; fi; sleep 1; done',
                "kill -- -$server; wait $server || true",
                '[ "$up" = 1 ] || { cat mlflow-ui.log; exit 1; }',
                "echo mlflow ui answered /health",
            ]
        else:
            lines.append(f"time {full}")
    return "\n".join(lines) + "\n"


def test_every_readme_command_is_run_or_has_a_reason_not_to_be():
    commands = readme_commands()
    assert len(commands) >= 15
    used = {rule(command) for _, command in commands}
    assert used == set(RUN) | set(NOT_RUN), f"rules no README command uses: {(set(RUN) | set(NOT_RUN)) - used}"


def test_the_readme_commands_run_as_written_in_a_fresh_activated_shell(tmp_path):
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "pipeline.py").symlink_to(ROOT / "pipeline.py")
    (tmp_path / "bench").symlink_to(ROOT / "bench")
    venv_bin = str((ROOT / ".venv" / "bin").resolve())
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH") and not key.startswith(("MLFLOW_", "AWS_", "CLIPCITE_", "KFP_"))
    }
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p and str(Path(p).resolve()) != venv_bin)
    text = script(readme_commands(), free_port())
    (tmp_path / "readme.sh").write_text(text)
    out = subprocess.run(
        ["bash", "readme.sh"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=900, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"a README command failed:\n{out.stdout[-6000:]}"
    print("\n".join(line for line in out.stdout.splitlines() if line.startswith(("+ README", "  ("))))

    assert (tmp_path / "runs" / "toyworld" / "classes.json").is_file()  # the example writes under runs/ (ignored)
    assert (tmp_path / "runs" / "default" / "eval" / "metrics.json").is_file()
    assert (tmp_path / "runs" / "bench" / "toyworld_methods.md").is_file()  # the bench ran, in its smoke form
    assert "mlflow ui answered /health" in out.stdout
    run_output = out.stdout.split("python pipeline.py run", 1)[1].split("\n+ README.md:", 1)[0]
    assert "1 shots, seed 1" in run_output and "data runs/default/table" in run_output  # the summary says what ran
    assert len(run_output.splitlines()) < 60, f"pipeline.py run is not quiet:\n{run_output}"
    champion = out.stdout.split("clipcite champion clipcite", 1)[1].split("\n+ README.md:", 1)[0]
    assert re.search(r"^\* v1 ", champion, re.M), champion
    assert (tmp_path / "pipeline.yaml").read_text() == (ROOT / "pipeline.yaml").read_text()
