"""Real servers for tests, on loopback only, stopped afterwards: ``moto_server`` (S3) and ``mlflow server``."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
PORT_TRIES = 3  # another process may take a free port between our check and the server's bind
ADDRESS_IN_USE = ("address already in use", "errno 98", "eaddrinuse")


def free_port() -> int:
    """A port nothing listens on now. Not reserved: a server started on it may find it taken (see ``_serving``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dead_url() -> Iterator[str]:
    """An http URL on loopback that refuses connections: its port is bound by this process but not listening, so
    no other process can start a server on it while the URL is in use."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def lost_port(log: str) -> bool:
    """Did the server exit because its port was taken before it could bind?"""
    return any(marker in log.lower() for marker in ADDRESS_IN_USE)


@contextlib.contextmanager
def _serving(
    command_for: Callable[[int], list[str]],
    health: str,
    *,
    env: dict | None = None,
    log: Path | None = None,
    wait_s: float = 60,
) -> Iterator[str]:
    """Start ``command_for(port)`` on a free port and wait until ``http://127.0.0.1:<port><health>`` answers; yield
    the base URL. A server that exits because its port was taken is started again on another port."""
    with tempfile.TemporaryDirectory() as scratch:
        log = log or Path(scratch) / "server.log"
        for attempt in range(1, PORT_TRIES + 1):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            command = command_for(port)
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
                try:
                    if _wait_until_up(process, url + health, wait_s):
                        yield url
                        return
                    tail = log.read_text(errors="replace")[-2000:]
                    if attempt == PORT_TRIES or not lost_port(tail):
                        raise RuntimeError(f"{command[0]} did not start (exit {process.poll()}): {tail}")
                finally:
                    _stop(process)


def _wait_until_up(process: subprocess.Popen, url: str, wait_s: float) -> bool:
    """True once ``url`` answers; False if the process exits or ``wait_s`` passes first."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)  # loopback only
            time.sleep(0.2)
            return process.poll() is None  # not another server that took the port and answered for ours
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def _stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 15)  # the server and its workers
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait()


@contextlib.contextmanager
def moto_server(*, require_auth: bool = False) -> Iterator[str]:
    """Start moto_server on loopback; yield its endpoint URL. ``require_auth`` makes it check credentials
    (unknown keys are refused, as a real store refuses wrong ones)."""
    binary = shutil.which("moto_server", path=str(BIN)) or "moto_server"
    env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if require_auth else {})}
    with _serving(lambda port: [binary, "-H", "127.0.0.1", "-p", str(port)], "/moto-api/", env=env, wait_s=30) as url:
        yield url


def s3_environment(endpoint: str) -> dict[str, str]:
    return {
        **S3_ENV,
        "AWS_ENDPOINT_URL": endpoint,
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
        "HOME": os.environ.get("HOME", "/tmp"),
    }


@contextlib.contextmanager
def s3_store(mp, *buckets: str) -> Iterator[str]:
    """moto_server on loopback, this process's S3 environment pointed at it through ``mp`` (a MonkeyPatch, so the
    caller's scope restores it) and ``buckets`` created; yields the endpoint URL."""
    import boto3

    with moto_server() as endpoint:
        for key, value in s3_environment(endpoint).items():
            mp.setenv(key, value)
        client = boto3.client("s3", endpoint_url=endpoint)
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield endpoint


@contextlib.contextmanager
def mlflow_server(workdir: Path, artifacts_destination: str, s3_endpoint: str) -> Iterator[str]:
    """``mlflow server`` with a sqlite backend and artifacts proxied to ``artifacts_destination`` (s3://...)."""
    env = {**os.environ, **s3_environment(s3_endpoint), "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}

    def command(port: int) -> list[str]:
        return [
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

    with _serving(command, "/health", env=env, log=workdir / "mlflow-server.log", wait_s=120) as url:
        yield url
