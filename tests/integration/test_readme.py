"""The local commands of the README and of every guide it links in ``docs/``, run as a new user runs them, so
neither can drift from what works; and every link between them resolves.

Every command line of every ``bash`` block, the README's first and then each guide's in the order the README links
them (the order a reader meets them: ``docs/local.md``'s run writes the ``./mlflow.db`` that
``docs/registry-and-serving.md`` reads), runs in one fresh shell in an empty working directory (with ``.venv``,
``pipeline.py`` and ``bench/`` linked in, as in a checkout): no ``VIRTUAL_ENV``, no ``.venv/bin`` on ``PATH`` and
no MLflow, S3 or CLIPCITE settings, so only the guides' own ``source .venv/bin/activate`` makes ``python``,
``clipcite`` and ``mlflow`` work. A command that would take minutes gets tiny settings appended (``RUN`` says how
and why; a bench gets its ``--smoke`` form, tests/integration/test_benches.py); a command that needs a cluster, the
team's registry or the built images is in ``NOT_RUN`` with the reason. A command in any guide that neither covers fails
the test.
"""

import os
import re
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # see pyproject.toml: `make test-fast` leaves these out

ROOT = Path(__file__).resolve().parents[2]
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
    "python -m bench.toyworld_methods": ("--smoke", "the bench's smoke form: a tiny world, 1 shot, 1 epoch, 2 methods"),
    "python pipeline.py compile": ("", "as written"),
    "python -m clipcite.data.demo_folder": ("", "as written: 288 small PNGs, seconds"),
    "clipcite ingest imagefolder": ("", "as written: the demo folder the command before it wrote"),
    "python -m clipcite.tracking.champion_env": (
        "",
        "as written: resolves the champion of the ./mlflow.db the run above wrote",
    ),
}
NOT_RUN = {
    "make run": "setup, then `python pipeline.py run`, which runs here (this test runs inside the set-up .venv)",
    "make test": "the test suite this test is part of",
    "python pipeline.py submit": "needs a KFP server (tests/unit/pipeline/test_dag.py mocks its client)",
    "python pipeline.py schedule": "needs a KFP server (tests/unit/pipeline/test_dag.py mocks its client)",
    "clipcite champion pets": "needs the team's registry (tests/integration/test_mlflow_registry.py rolls back)",
    "clipcite ingest coop": "needs a CoOp download under $DATA (tests/unit/data/test_coop.py builds each layout small)",
    "make test-containers": "the container tier: .ci/run runs it after make test (images, minutes)",
    "make images": "builds the images (minutes, GB): make test-containers does, with podman",
    "make push-images": "needs the team's registry",
    "make base-image": "debootstrap as root (a minute): make test-containers does when the base is missing",
    "podman system service": "a daemon: tests/containers/test_dag_in_containers.py starts one (bench/containers.py)",
    "export DOCKER_HOST": "points at that daemon",
    "python pipeline.py run --runner docker": "needs the images and an engine: make test-containers runs it",
    "python -m bench.containers": "needs the images and podman: make test-containers runs its --smoke form",
}
# Guides the README links ahead of their arrival (another change adds them); their links are not checked until then.
PENDING: dict[str, str] = {}


def guides() -> list[Path]:
    """README.md, then the guides in docs/ in the order of the README's table of them (those that exist yet)."""
    linked = re.findall(r"^\| \[(docs/[^\]]+\.md)\]", (ROOT / "README.md").read_text(), flags=re.M)
    return [ROOT / "README.md", *(ROOT / p for p in dict.fromkeys(linked) if (ROOT / p).is_file())]


def file_commands(path: Path) -> list[tuple[str, int, str]]:
    """(file, line number, command) for every command line of a Markdown file's bash blocks, continuation lines
    joined and trailing comments dropped."""
    commands, fence, bash, pending = [], False, False, None
    where = str(path.relative_to(ROOT))
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            fence, bash = not fence, line == "```bash" and not fence
            continue
        if not bash:
            continue
        start, text = (pending[0], f"{pending[1]} {line.strip()}") if pending else (number, line.strip())
        pending = (start, text[:-1].rstrip()) if text.endswith("\\") else None
        command = re.sub(r"\s+#\s.*$", "", text).strip()
        if not pending and command and not command.startswith("#"):
            commands.append((where, start, command))
    return commands


def readme_commands() -> list[tuple[str, int, str]]:
    """Every guide's commands, in reading order (:func:`guides`)."""
    return [command for path in guides() for command in file_commands(path)]


def rule(command: str) -> str:
    """The longest rule the command starts with (``python pipeline.py run --runner docker`` before ``... run``)."""
    matches = [prefix for prefix in (*RUN, *NOT_RUN) if command.startswith(prefix)]
    assert matches, f"guide command {command!r}: add it to RUN (with tiny settings) or NOT_RUN (why)"
    return max(matches, key=len)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script(commands: list[tuple[str, int, str]], port: int) -> str:
    lines = ["set -euo pipefail", "TIMEFORMAT='  (%U s user + %S s sys, %R s wall)'"]
    for where, number, command in commands:
        prefix = rule(command)
        if prefix in NOT_RUN:
            continue
        full = f"{command} {RUN[prefix][0].replace('{port}', str(port))}".strip()
        lines.append(f"echo {shlex.quote(f'+ {where}:{number}: {full}')}")
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


def test_every_guide_command_is_run_or_has_a_reason_not_to_be():
    commands = readme_commands()
    assert len(commands) >= 20
    assert {where for where, _, _ in commands} >= {"README.md", "docs/local.md", "docs/registry-and-serving.md"}
    used = {rule(command) for _, _, command in commands}
    assert used == set(RUN) | set(NOT_RUN), f"rules no guide command uses: {(set(RUN) | set(NOT_RUN)) - used}"


def test_every_guide_in_docs_is_reached_from_the_readme():
    """A guide nobody links is a guide nobody reads: each docs/*.md is linked from the README or a guide it links."""
    reached, queue = set(), [ROOT / "README.md"]
    while queue:
        page = queue.pop()
        for target, _ in links(page):
            if target.suffix == ".md" and target.is_file() and target not in reached:
                reached.add(target)
                queue.append(target)
    assert sorted(p.name for p in (ROOT / "docs").glob("*.md") if p not in reached) == []
    assert [p.relative_to(ROOT).as_posix() for p in guides()][:3] == ["README.md", "docs/local.md", "docs/data.md"]


def links(page: Path) -> list[tuple[Path, str]]:
    """(target file, anchor) of every relative link in a Markdown page, code spans and blocks left out."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http(s):, mailto:
            continue
        path, _, anchor = target.partition("#")
        found.append(((page.parent / path).resolve() if path else page, anchor))
    return found


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    titles = re.findall(r"^#{1,6} (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", t.strip().lower()).replace(" ", "-") for t in titles}


def test_every_link_between_the_guides_resolves_to_a_file_and_heading():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("bench/*.md"))]
    pages += sorted(ROOT.glob("manifests/**/*.md"))
    broken = []
    for page in pages:
        for target, anchor in links(page):
            name = target.relative_to(ROOT).as_posix() if target.is_relative_to(ROOT) else str(target)
            if name in PENDING:
                continue
            if not target.exists():
                broken.append(f"{page.relative_to(ROOT)}: {name} does not exist")
            elif anchor and anchor not in anchors(target):
                broken.append(f"{page.relative_to(ROOT)}: {name} has no heading #{anchor}")
    assert broken == []


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
    assert out.returncode == 0, f"a guide's command failed:\n{out.stdout[-6000:]}"
    print("\n".join(line for line in out.stdout.splitlines() if line.startswith(("+ ", "  ("))))

    assert (tmp_path / "runs" / "toyworld" / "classes.json").is_file()  # the example writes under runs/ (ignored)
    assert (tmp_path / "runs" / "default" / "eval" / "metrics.json").is_file()
    assert (tmp_path / "runs" / "bench" / "toyworld_methods.md").is_file()  # the bench ran, in its smoke form
    assert "mlflow ui answered /health" in out.stdout
    run_output = out.stdout.split("python pipeline.py run", 1)[1].split("\n+ ", 1)[0]
    assert "1 shots, seed 1" in run_output and "data runs/default/table" in run_output  # the summary says what ran
    assert len(run_output.splitlines()) < 60, f"pipeline.py run is not quiet:\n{run_output}"
    champion = out.stdout.split("clipcite champion clipcite", 1)[1].split("\n+ ", 1)[0]
    assert re.search(r"^\* v1 ", champion, re.M), champion
    assert (tmp_path / "pipeline.yaml").read_text() == (ROOT / "pipeline.yaml").read_text()
    assert (tmp_path / "runs" / "images-table" / "classes.json").is_file()  # docs/data.md's ingest
    assert (tmp_path / "runs" / "paper" / "run.yaml").is_file()  # docs/configuration.md's resolved config
    served = out.stdout.split("python -m clipcite.tracking.champion_env", 1)[1].split("\n+ ", 1)[0]
    assert re.search(r"^version=1$", served, re.M), served  # the champion of the local run
