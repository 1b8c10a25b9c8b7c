"""The registry as the cluster runs it and as a person browses it: PostgreSQL from Debian's package and ``mlflow
server`` with docker/Dockerfile.mlflow's requirements on 127.0.0.1, two pipeline runs that register and promote
through the register step, the alias resolved for serving, a rollback; then the MLflow UI in headless Chromium.

    apt-get install -y postgresql chromium                      # Debian's packages (root)
    python -m bench.registry_stack                              # PostgreSQL backend + browser, ~6 min on 2 cores
    python -m bench.registry_stack --backend sqlite             # the browser half on a sqlite store
    python -m bench.registry_stack --server-venv runs/registry_stack/server-venv   # reuse the server's venv

Checks (the script exits 1 when one fails, printing which): both runs register a version (v1 takes ``champion``,
v2's gate decision and reason are tags); PostgreSQL's own tables hold the versions and the alias; every version has
its model card and the registered model its description; no ``metric.*`` version tags; ``python -m
clipcite.tracking.champion_env`` resolves the alias to the champion's artifact URI; ``clipcite champion --promote``
moves the alias (rollback) and back.
Browser: the registered model page and the champion's version page, rendered by Chromium
(``--dump-dom`` after a virtual-time budget, so the React app has drawn), show the ``champion`` alias and the model
card's table; screenshots go to ``<out>/screenshots/``, the DOMs and a summary to ``<out>/``.

Why a bench and not a test: PostgreSQL, a second venv for the server (psycopg2) and two DAG runs take minutes, and
the browser needs Debian's Chromium; the suite keeps MLflow on sqlite (tests/integration/test_mlflow_registry.py) and
checks the card's content and the tags there.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NAME = "clipcite-stack"
RUNS = {"first": {"train.epochs": 1, "train.lr": 1e-6}, "second": {"train.epochs": 1, "train.lr": 1e-4}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "registry_stack")
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--server-venv", type=Path, default=None, help="venv with requirements-mlflow-server.txt")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out / "pipeline", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"backend": args.backend, "checks": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="registry-stack-") as tmp:
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o755)
        if args.backend == "postgres":
            server_python = _server_venv(args.server_venv or out / "server-venv")
            backend_cm = _postgres(tmp_path / "pg")
        else:
            server_python = Path(sys.executable)
            backend_cm = _nullcontext(f"sqlite:///{tmp_path / 'mlflow.db'}")
        with backend_cm as backend, _mlflow_server(server_python, backend, tmp_path / "artifacts", out) as url:
            summary["tracking_uri"] = url
            _fill(url, out, tmp_path, summary)
            if args.backend == "postgres":
                summary["checks"]["postgres_tables"] = _postgres_tables(tmp_path / "pg")
            if not args.no_browser:
                _browse(url, out, summary)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    failed = [k for k, v in summary["checks"].items() if not (v is True or (isinstance(v, dict) and v.get("ok")))]
    summary["failed"] = failed
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'} ({summary['seconds']} s); {out}")
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------------ the servers


@contextmanager
def _nullcontext(value):
    yield value


def _server_venv(path: Path) -> Path:
    """A venv with docker/Dockerfile.mlflow's requirements (requirements-mlflow-server.txt: MLflow + psycopg2)."""
    python = path / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements-mlflow-server.txt")], check=True
        )
    return python


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise SystemExit("PostgreSQL is not installed: apt-get install -y postgresql")
    return found[-1].parent


def _as_postgres(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """PostgreSQL refuses to run as root: run as the package's ``postgres`` user when we are root."""
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-1000:]}")
    return done


@contextmanager
def _postgres(data: Path):
    """initdb in a temp dir, a server on 127.0.0.1 (a free port, socket in the data dir), user and database mlflow."""
    from tests.support.servers import free_port

    pg = _pg_bin()
    data.mkdir()
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
    _as_postgres([str(pg / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    port = free_port()
    options = f"-h 127.0.0.1 -p {port} -k {data}"
    _as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(data / "log"), "-w", "start"])
    (data / "port").write_text(str(port))
    try:
        psql = [str(pg / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        _as_postgres([*psql, "-c", "CREATE USER mlflow PASSWORD 'bench-only'"])
        _as_postgres([*psql, "-c", "CREATE DATABASE mlflow OWNER mlflow"])  # not in a transaction with the user
        # The driver named as manifests/base/tracking/mlflow.yaml names it: SQLAlchemy 2.1's default for a bare
        # postgresql:// is psycopg 3, which requirements-mlflow-server.txt does not install (psycopg2-binary).
        yield f"postgresql+psycopg2://mlflow:bench-only@127.0.0.1:{port}/mlflow"
    finally:
        _as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])


def _postgres_tables(data: Path) -> dict:
    """The registry as PostgreSQL stores it (not through MLflow): versions and the champion alias."""
    port = (data / "port").read_text()
    psql = [str(_pg_bin() / "psql"), "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", "mlflow", "-At", "-c"]
    versions = _as_postgres([*psql, f"SELECT version FROM model_versions WHERE name = '{NAME}' ORDER BY version"])
    alias = _as_postgres([*psql, f"SELECT version FROM registered_model_aliases WHERE name = '{NAME}'"])
    result = {"versions": versions.stdout.split(), "champion": alias.stdout.strip()}
    result["ok"] = result["versions"] == ["1", "2"] and result["champion"] in ("1", "2")
    return result


@contextmanager
def _mlflow_server(python: Path, backend: str, artifacts: Path, out: Path):
    from tests.support.servers import _serving

    mlflow = python.parent / "mlflow"

    def command(port: int) -> list[str]:
        return [
            str(mlflow),
            "server",
            f"--backend-store-uri={backend}",
            f"--artifacts-destination={artifacts.as_uri()}",
            "--host=127.0.0.1",
            f"--port={port}",
            "--workers=1",
        ]

    with _serving(command, "/health", log=out / "mlflow-server.log", wait_s=240) as url:
        yield url


# ------------------------------------------------------------------------------------------ the pipeline's half


def _fill(url: str, out: Path, tmp: Path, summary: dict) -> None:
    """Two pipeline runs register v1 and v2 through the register step; then what the registry holds."""
    import mlflow

    from clipcite.pipeline import cli
    from clipcite.toyworld.generate import write_world

    os.environ["MLFLOW_TRACKING_URI"] = url
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    data = tmp / "world"
    write_world(str(data), seed=1, counts={"train": 3, "val": 1, "test": 2}, domains=("photo", "sketch"))
    decisions = {}
    for name, overrides in RUNS.items():
        params = {
            "data_uri": str(data),
            "shots": 2,
            "overrides": {**overrides, "eval.batch_size": 96},
            "registered_model_name": NAME,
            "tracking_uri": url,
        }
        t0 = time.perf_counter()
        result = cli.run_local(params, out / "pipeline" / name, quiet=True)
        record = json.loads((result["record"] / "registration.json").read_text())["registry"]
        decisions[name] = {k: record[k] for k in ("version", "decision", "reason")}
        decisions[name]["seconds"] = round(time.perf_counter() - t0, 1)
    summary["runs"] = decisions
    registry_checks(url, NAME, decisions, summary)


def registry_checks(url: str, name: str, decisions: dict, summary: dict) -> None:
    """What the registry holds after the runs (``decisions``: each run's version, decision and reason, in order),
    into ``summary["checks"]``; tests/integration/test_mlflow_registry.py runs these on its own stack. The alias is
    moved away
    (rollback) and back, and the moved version's gate tags restored."""
    from mlflow import MlflowClient

    from clipcite.cli import main as cli
    from clipcite.tracking import champion_env

    client = MlflowClient(url)
    versions = {v.version: v for v in client.search_model_versions(f"name = '{name}'")}
    holder = client.get_model_version_by_alias(name, "champion").version
    summary["champion"] = holder
    checks = summary.setdefault("checks", {})
    first = next(iter(decisions.values()))
    checks["versions_first_is_champion"] = (
        sorted(map(int, versions)) == list(range(1, len(decisions) + 1)) and first["decision"] == "champion"
    )
    checks["gate_tags"] = all(
        versions[str(d["version"])].tags.get("gate.reason") == d["reason"] for d in decisions.values()
    )
    checks["no_metric_tags"] = not [k for v in versions.values() for k in v.tags if k.startswith("metric.")]
    checks["model_cards"] = all("## Per-domain accuracy" in (v.description or "") for v in versions.values())
    checks["model_description"] = "How versions are promoted" in (client.get_registered_model(name).description or "")
    resolved = champion_env.resolve(client, name)
    checks["alias_resolves"] = resolved["version"] == str(holder) and resolved["artifact-uri"].startswith(
        "mlflow-artifacts:"
    )
    summary["resolved"] = resolved
    other = "1" if holder != "1" else "2"
    saved = {k: versions[other].tags[k] for k in ("gate.decision", "gate.reason")}  # the rollback retags it
    card = versions[other].description or ""  # and notes the manual promotion on its card
    moved = cli(["champion", name, "--promote", other, "--reason", "bench rollback", "--tracking-uri", url]) == 0
    moved = moved and client.get_model_version_by_alias(name, "champion").version == other
    client.set_registered_model_alias(name, "champion", holder)  # back to the gate's choice for the browser half
    for key, value in saved.items():
        client.set_model_version_tag(name, other, key, value)
    client.update_model_version(name, other, description=card)
    checks["rollback"] = moved and client.get_model_version_by_alias(name, "champion").version == holder


# ------------------------------------------------------------------------------------------------ the browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("Chromium is not installed: apt-get install -y chromium")


def _render(url: str, *, screenshot: Path | None = None, budget_ms: int = 20000) -> str:
    """The DOM after the page's scripts ran for ``budget_ms`` of virtual time (and a screenshot of it)."""
    flags = [
        _chromium(),
        "--headless",
        "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1600",
        f"--virtual-time-budget={budget_ms}",
    ]
    if screenshot is not None:
        subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=True)
    done = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True)
    return done.stdout


def _browse(url: str, out: Path, summary: dict) -> None:
    shots = out / "screenshots"
    shots.mkdir(exist_ok=True)
    holder = summary["champion"]
    pages = {
        "model": f"{url}/#/models/{NAME}",
        "version": f"{url}/#/models/{NAME}/versions/{holder}",
    }
    checks = summary["checks"]
    for page, address in pages.items():
        dom = _render(address, screenshot=shots / f"{page}.png")
        (out / f"{page}.dom.html").write_text(dom)
        found = dom_checks(page, dom, holder)
        checks[f"browser_{page}"] = {"ok": all(found.values()), **found, "dom_bytes": len(dom)}
    summary["screenshots"] = sorted(str(p) for p in shots.glob("*.png"))


def dom_checks(page: str, dom: str, holder: str) -> dict:
    """What the rendered page must show: the UI's alias chip ("@ champion", not the word in a description), and on
    the version page the model card's table with this version's row, on the model page its description."""
    found = {"champion alias chip": bool(re.search(r">@(&nbsp;|\u00a0|\s)champion<", dom))}
    if page == "version":
        table = re.search(r"<h2>Per-domain accuracy</h2>\s*<table>([\s\S]*?)</table>", dom)
        rows = re.findall(
            rf"<tr>\s*<td>[^<]+</td>\s*<td><strong>v{holder}</strong> \(this\)</td>", table[1] if table else ""
        )
        found["card table with this version's rows"] = len(rows) >= 2
    else:
        found["model description"] = "<h2>How versions are promoted</h2>" in dom
    return found


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
