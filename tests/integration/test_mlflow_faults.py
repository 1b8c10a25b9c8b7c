"""MLflow faults: the tracking server restarted while finetune logs (logging recovers: every step of the curve once,
the run FINISHED), a server that stays down fails the step with a message naming it, and a registration whose
reply is lost (the server registered the version, the client never heard) registers exactly one version."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from clipcite.steps import cache_teacher, sample_splits
from clipcite.tracking import registry, runs
from tests.conftest import TINY, tiny_config
from tests.support.faultproxy import FaultProxy
from tests.support.servers import BIN, _stop, _wait_until_up, free_port

pytestmark = pytest.mark.slow  # see pyproject.toml: `make test-fast` leaves these out

CONFIG = [*TINY, "splits.shots=2", "train.epochs=2", "train.batch_size=4"]
FINETUNE = textwrap.dedent(
    """
    import json, sys
    from clipcite.config import load_config
    from clipcite.steps import finetune
    splits, cache, out, uri, run_id, *overrides = sys.argv[1:]
    summary = finetune.run(splits, out, load_config(overrides=overrides), cache_uri=cache, tracking_uri=uri,
                           mlflow_run_id=run_id)
    print("STEPS", summary.steps)
    """
)


class Server:
    """``mlflow server`` on a fixed loopback port, so it can be stopped and started again at the same address."""

    def __init__(self, work: Path):
        self.work, self.port = work, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--backend-store-uri", f"sqlite:///{self.work / 'mlflow.db'}", "--workers", "1"]
        command += ["--artifacts-destination", str(self.work / "artifacts")]
        with open(self.work / "server.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if not _wait_until_up(self.process, self.url + "/health", 120):
            raise RuntimeError(f"mlflow server did not start: {(self.work / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None


@pytest.fixture(scope="module")
def prepared(table, tmp_path_factory):
    work = tmp_path_factory.mktemp("mlflow-faults")
    config = tiny_config("splits.shots=2", "train.epochs=2", "train.batch_size=4")
    sample_splits.run(str(table), str(work / "splits"), config)
    cache_teacher.run(str(work / "splits"), str(work / "teacher"), config)
    server = Server(work)
    server.start()
    try:
        yield {"work": work, "server": server}
    finally:
        server.stop()


def _finetune(prepared, out: str, run_id: str, env: dict | None = None) -> subprocess.Popen:
    work = prepared["work"]
    args = [str(work / "splits"), str(work / "teacher"), str(work / out), prepared["server"].url, run_id, *CONFIG]
    return subprocess.Popen(
        [sys.executable, "-c", FINETUNE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _step_run(db: Path, parent: str):
    """The finetune run under ``parent``, read from the server's database (not through the server)."""
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_run(parent).info.experiment_id
    found = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    return client, (found[0] if found else None)


def test_finetune_logging_recovers_from_a_tracking_server_restart(prepared):
    server, db = prepared["server"], prepared["work"] / "mlflow.db"
    parent = runs.open_pipeline_run(server.url, "faults", run_name="restart")
    process = _finetune(prepared, "model-restart", parent, {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"})
    deadline = time.monotonic() + 180
    while _step_run(db, parent)[1] is None:  # the step's run exists: it is logging now
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.2)
    server.stop()  # the server goes away mid-step ...
    time.sleep(3)
    server.start()  # ... and comes back at the same address with the same store
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]
    client, run = _step_run(db, parent)
    assert run.info.status == "FINISHED"
    steps = int(output.split("STEPS ")[-1].split()[0])
    curve = client.get_metric_history(run.info.run_id, "train/total")
    assert sorted(m.step for m in curve) == sorted({m.step for m in curve}) and len(curve) == steps, curve
    assert run.data.params["config.train.epochs"] == "2"
    curves = (prepared["work"] / "model-restart" / "curves.jsonl").read_text().splitlines()
    assert [round(m.value, 5) for m in sorted(curve, key=lambda m: m.step)] == [
        round(json.loads(line)["total"], 5) for line in curves
    ]


def test_a_step_fails_naming_the_server_when_it_stays_down(prepared, monkeypatch):
    """The server goes away mid-step and does not come back: once MLflow's HTTP retries (bounded here to 2) run out,
    the step fails with a message naming the server and the step (what finetune's last log line says)."""
    server = prepared["server"]
    parent = runs.open_pipeline_run(server.url, "faults", run_name="down")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    try:
        with (
            pytest.raises(runs.TrackingError) as raised,
            runs.step_run(server.url, parent, "finetune", system_metrics=False) as step,
        ):
            step.log_params({"lr": 1e-5})
            server.stop()
            step.log_metrics({"train/total": 1.0}, 1)  # sent when the step ends
    finally:
        server.start()  # for the other tests
    message = str(raised.value)
    assert message.startswith(f"MLflow tracking server {server.url} stopped answering during step 'finetune'")
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES=2" in message and "Connection refused" in message


def test_a_lost_reply_to_create_model_version_registers_one_version(prepared):
    """The server registers the version but the reply never arrives: the client must not register it again."""
    server = prepared["server"]
    seen = []

    def lose_first_create(method: str, path: str) -> str:
        if method == "POST" and path.endswith("/model-versions/create"):
            seen.append(path)
            return "lost_reply" if len(seen) == 1 else "none"
        return "none"

    client = runs.connect(server.url)
    run_id = runs.open_pipeline_run(server.url, "faults", run_name="register")
    model_dir = prepared["work"] / "fake-model"
    model_dir.mkdir()
    (model_dir / "weights.txt").write_text("weights")
    client.log_artifacts(run_id, str(model_dir), "model")
    source = client.get_run(run_id).info.artifact_uri + "/model"
    with FaultProxy(server.url, rule=lose_first_create) as proxy:
        proxied = runs.connect(proxy.url)
        version = registry.register_version(
            proxied, "lost-reply", source, run_id=run_id, pipeline_run_id=run_id, tags={"k": "v"}
        )
    assert proxy.counts["lost_reply"] == 1
    versions = MlflowClient(server.url).search_model_versions("name = 'lost-reply'")
    assert [v.version for v in versions] == [version.version] == ["1"]
    assert versions[0].tags[registry.RUN_TAG] == run_id
