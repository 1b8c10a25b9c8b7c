"""Secrets stay secret: recognisable values planted in ``AWS_SECRET_ACCESS_KEY``, ``MLFLOW_TRACKING_PASSWORD`` and
``KFP_TOKEN`` while the pipeline runs locally (data on S3, an MLflow server behind a recording proxy) appear in
none of: MLflow params, tags, run and model metadata, artifacts; the step logs; ``pipeline.yaml``; the saved model.
"""

import base64
import secrets
from pathlib import Path

import boto3
import pytest
from mlflow import MlflowClient

from clipcite.pipeline import (
    cli,
    dag,
)
from clipcite.toyworld.generate import write_world
from tests.support.faultproxy import FaultProxy
from tests.support.servers import mlflow_server, s3_store

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # see pyproject.toml: `make test-fast` leaves these out

USER = "clipcite-ci"
PLANTED = {
    name: f"{tag}-{secrets.token_hex(12)}"
    for name, tag in (
        ("AWS_SECRET_ACCESS_KEY", "PLANTEDawsSecret"),
        ("MLFLOW_TRACKING_PASSWORD", "PLANTEDmlflowPassword"),
        ("KFP_TOKEN", "PLANTEDkfpToken"),
    )
}
DATA = "s3://clipcite-data/world"
NAME = "secrets-check"


def _needles() -> dict[str, bytes]:
    """Each secret as it is, base64-encoded, and the HTTP Basic credentials MLflow's client sends."""
    out = {}
    for name, value in PLANTED.items():
        out[name] = value.encode()
        out[f"{name} (base64)"] = base64.b64encode(value.encode())
    basic = f"{USER}:{PLANTED['MLFLOW_TRACKING_PASSWORD']}".encode()
    out["MLflow Basic credentials"] = base64.b64encode(basic)
    return out


def _found(blob: bytes) -> list[str]:
    return [name for name, needle in _needles().items() if needle in blob]


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("secrets")
    headers_seen: list[str] = []
    with pytest.MonkeyPatch.context() as mp, s3_store(mp, "clipcite-data", "mlflow-artifacts") as s3:
        write_world(DATA, seed=1, counts={"train": 3, "val": 1, "test": 2}, domains=("photo",))
        with (
            mlflow_server(work, "s3://mlflow-artifacts/mlflow", s3) as server,
            FaultProxy(server, on_request=lambda m, p, h: headers_seen.append(h.get("Authorization", ""))) as proxy,
        ):
            for key, value in PLANTED.items():
                mp.setenv(key, value)  # moto does not check the secret: the steps sign every request with it
            mp.setenv("MLFLOW_TRACKING_USERNAME", USER)
            mp.setenv("MLFLOW_TRACKING_URI", proxy.url)
            params = {"data_uri": DATA, "shots": 2, "overrides": {"train.epochs": 1}, "registered_model_name": NAME}
            result = cli.run_local(params, work / "run")
            spec = dag.compile_pipeline(work / "pipeline.yaml")
            yield {"result": result, "work": work, "spec": spec, "url": proxy.url, "s3": s3, "auth": headers_seen}


def test_the_planted_credentials_were_in_use(planted_run):
    basic = "Basic " + base64.b64encode(f"{USER}:{PLANTED['MLFLOW_TRACKING_PASSWORD']}".encode()).decode()
    assert planted_run["auth"] and set(planted_run["auth"]) == {basic}  # every MLflow request carried it
    registry = planted_run["result"]["record"] / "registration.json"
    assert NAME in registry.read_text()  # the run got as far as registering, over the planted credentials


def test_no_secret_in_mlflow_params_tags_metadata_or_artifacts(planted_run):
    client = MlflowClient(planted_run["url"])
    texts = []
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert len(runs) >= 5  # the pipeline's run and one per step
    for run in runs:
        texts += [run.info.run_name or "", repr(run.data.params), repr(run.data.tags), repr(list(run.data.metrics))]
    for model in client.search_registered_models():
        texts += [repr(model.tags), model.description or ""]
    versions = client.search_model_versions(f"name = '{NAME}'")
    assert versions
    texts += [repr(v.tags) + (v.source or "") + (v.description or "") for v in versions]  # the model cards too
    assert not _found("\n".join(texts).encode())
    # Artifacts: every object the server stored (proxied to S3), and the tracking database itself.
    s3 = boto3.client("s3", endpoint_url=planted_run["s3"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow-artifacts")
    keys = [o["Key"] for page in pages for o in page["Contents"]]
    assert any(k.endswith("open_clip_model.safetensors") for k in keys) and len(keys) > 20
    leaks = {k: _found(s3.get_object(Bucket="mlflow-artifacts", Key=k)["Body"].read()) for k in keys}
    assert not {k: v for k, v in leaks.items() if v}
    assert not _found((planted_run["work"] / "mlflow.db").read_bytes())


def test_no_secret_in_step_logs_outputs_saved_model_or_pipeline_spec(planted_run):
    result, run_dir = planted_run["result"], planted_run["work"] / "run"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    model = [p for p in files if p.name == "open_clip_model.safetensors"]
    assert result["log"] in files and model and len(files) > 30  # the step log, the saved model, every output
    assert result["log"].stat().st_size > 10_000
    leaks = {str(p.relative_to(run_dir)): _found(p.read_bytes()) for p in files}
    assert not {k: v for k, v in leaks.items() if v}
    for spec in (planted_run["spec"], ROOT / "pipeline.yaml"):  # compiled with the secrets set; the committed one
        assert "executors" in spec.read_text() and not _found(spec.read_bytes())


def test_the_scan_finds_a_planted_value_where_there_is_one(tmp_path):
    """The scanner itself works: a file holding one secret, or its base64, is reported (the Basic credentials
    also hold the password's base64: the user name is a multiple of 3 bytes long)."""
    for name, needle in _needles().items():
        assert name in _found(b"prefix " + needle + b" suffix")
    assert not _found(b"prefix PLANTEDawsSecret-0123 suffix")
