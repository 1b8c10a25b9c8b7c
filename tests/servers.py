"""Real servers for tests, on loopback only, stopped afterwards: ``moto_server`` (S3) and ``mlflow server``."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(command: list[str], url: str, *, env: dict | None = None, log: Path | None = None, wait_s: float = 60):
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115  (closed below)
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)  # loopback only
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text()[-2000:] if log else ""
                    raise RuntimeError(f"{command[0]} did not start (exit {process.poll()}): {tail}") from None
                time.sleep(0.2)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)  # the server and its workers
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
        if log:
            out.close()


@contextlib.contextmanager
def moto_server(*, require_auth: bool = False) -> Iterator[str]:
    """Start moto_server on loopback; yield its endpoint URL. ``require_auth`` makes it check credentials
    (unknown keys are refused, as a real store refuses wrong ones)."""
    port = free_port()
    binary = shutil.which("moto_server", path=str(BIN)) or "moto_server"
    env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if require_auth else {})}
    endpoint = f"http://127.0.0.1:{port}"
    with _serving([binary, "-H", "127.0.0.1", "-p", str(port)], endpoint + "/moto-api/", env=env, wait_s=30):
        yield endpoint


def s3_environment(endpoint: str) -> dict[str, str]:
    return {
        **S3_ENV,
        "AWS_ENDPOINT_URL": endpoint,
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
        "HOME": os.environ.get("HOME", "/tmp"),
    }


@contextlib.contextmanager
def mlflow_server(workdir: Path, artifacts_destination: str, s3_endpoint: str) -> Iterator[str]:
    """``mlflow server`` with a sqlite backend and artifacts proxied to ``artifacts_destination`` (s3://...)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **s3_environment(s3_endpoint), "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts_destination,
        "--workers",
        "1",
    ]
    with _serving(command, url + "/health", env=env, log=workdir / "mlflow-server.log", wait_s=120):
        yield url
