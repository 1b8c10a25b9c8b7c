"""The same DAG run twice, side by side: every step a subprocess (`pipeline.py run`), then every step in its image
(`pipeline.py run --runner docker`, kfp.local's DockerRunner on podman's Docker API); prints both summary tables'
agreement and the wall-time ratio containers / subprocesses.

    python -m bench.containers --out runs/bench-containers            # make run's DAG (the toy world default)
    python -m bench.containers --out runs/bench-containers --smoke    # seconds-to-minutes: 2 shots, 1 epoch

Needs the images (`make images CONTAINER_ENGINE=podman ...`, or `make test-containers`, which builds them) and
podman (started here as a Docker API on a socket under --out) unless DOCKER_HOST already names an engine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--param", "shots=2", "--param", "overrides=" + json.dumps({"train.epochs": 1})]


@contextlib.contextmanager
def docker_api(workdir: Path) -> Iterator[str]:
    """``DOCKER_HOST`` when it is set; else podman's Docker API on a socket under ``workdir``, stopped afterwards."""
    if os.environ.get("DOCKER_HOST"):
        yield os.environ["DOCKER_HOST"]
        return
    if shutil.which("podman") is None:
        raise SystemExit("no DOCKER_HOST and no podman: install podman (docker/podman/setup.sh) or start Docker")
    workdir.mkdir(parents=True, exist_ok=True)
    socket = workdir / "podman.sock"
    socket.unlink(missing_ok=True)
    log = (workdir / "podman-service.log").open("w")
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        for _ in range(100):
            if socket.exists():
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"podman system service did not open {socket} (see {log.name})")
        yield f"unix://{socket}"
    finally:
        service.terminate()
        service.wait(timeout=30)
        log.close()


def run_pipeline(out: Path, extra: list[str], *, env: dict[str, str] | None = None) -> dict:
    """``pipeline.py run --no-cache`` into ``out`` with its own sqlite store; the wall time, the output and the
    summary table's rows."""
    command = [sys.executable, str(ROOT / "pipeline.py"), "run", "--no-cache", "--out", str(out)]
    command += ["--tracking-uri", f"sqlite:///{out.resolve()}/mlflow.db", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    table = [line for line in done.stdout.splitlines() if line.startswith("|")]
    return {"seconds": seconds, "returncode": done.returncode, "output": done.stdout + done.stderr, "table": table}


def compare(out: Path, extra: list[str]) -> dict:
    """Both runs of the same DAG; the containers' run through the Docker API this machine has."""
    subprocesses = run_pipeline(out / "subprocesses", extra)
    with docker_api(out) as host:
        containers = run_pipeline(
            out / "containers", [*extra, "--runner", "docker"], env={**os.environ, "DOCKER_HOST": host}
        )
    return {"subprocesses": subprocesses, "containers": containers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-containers"), help="where both runs go")
    parser.add_argument("--smoke", action="store_true", help="2 shots, 1 epoch: the form tests/containers runs")
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    runs = compare(args.out, SMOKE if args.smoke else [])
    for name, run in runs.items():
        if run["returncode"] != 0:
            print(f"{name} run failed:\n{run['output'][-3000:]}", file=sys.stderr)
            return 1
    same = runs["subprocesses"]["table"] == runs["containers"]["table"]
    print("\n".join(runs["containers"]["table"]))
    print(f"summary tables equal: {same}")
    seconds = {name: run["seconds"] for name, run in runs.items()}
    print(
        f"wall time: subprocesses {seconds['subprocesses']:.0f} s, containers {seconds['containers']:.0f} s, "
        f"ratio containers / subprocesses {seconds['containers'] / seconds['subprocesses']:.2f}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
