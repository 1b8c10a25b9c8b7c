"""The registered champion behind ``mlflow models serve`` on loopback, started as the serving manifest starts it
(``manifests/serving/deployment`` rendered with the version ``python -m clipcite.tracking.champion_env`` resolved):
base64 images in, labels out, ``labels``/``top_k`` params; malformed requests get a 400 that says what is wrong, and the
server keeps serving. (The load benchmark is ``bench/serve_load.py``.)"""

import base64
import io
import itertools
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from clipcite.model.clip import save_model
from clipcite.tracking import champion_env, registry, runs, served_model
from tests.support.kubectl import render
from tests.support.records import meta
from tests.support.servers import BIN, _serving

ROOT = Path(__file__).resolve().parents[2]


def _png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def _body(images: list[str], params: dict | None = None, column: str = "image") -> dict:
    payload: dict = {"dataframe_split": {"columns": [column], "data": [[x] for x in images]}}
    return {**payload, "params": params} if params else payload


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny):
    work = tmp_path_factory.mktemp("serving")
    save_model(
        tiny,
        tiny.model.state_dict(),
        work / "model",
        meta(arch=tiny.name, base_identity=tiny.identity, classnames=("cat", "dog"), template="a {}."),
    )
    uri = f"sqlite:///{work / 'mlflow.db'}"
    run_id = runs.open_pipeline_run(uri, "serving")
    with runs.step_run(uri, run_id, "register", system_metrics=False) as step:
        model_uri = served_model.log_classifier(step, work / "model", example_images=[base64.b64decode(_png(_grey()))])
        client = step.client
        version = registry.register_version(
            client, "served", model_uri, run_id=step.run_id, pipeline_run_id=run_id, tags={}
        )
    registry.set_champion(client, "served", version.version)
    # Deploy as docs/registry-and-serving.md says: resolve the alias into champion.env, render the Deployment, run
    # its container's args.
    tree = work / "serving"
    shutil.copytree(ROOT / "manifests" / "serving", tree)
    assert (
        champion_env.main(["--name", "served", "--tracking-uri", uri, "--out", str(tree / "champion" / "champion.env")])
        == 0
    )
    (deployment,) = [o for o in render(tree / "deployment") if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    values = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert values["MODEL_VERSION"] == str(version.version) and values["MODEL_URI"].startswith("file://")
    args = [a.replace("$(MODEL_URI)", values["MODEL_URI"]) for a in container["args"]]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    def command(port: int) -> list[str]:  # the manifest's args on loopback, a free port and one worker
        flags = {"-h": "127.0.0.1", "-p": str(port), "-w": "1"}
        return [str(BIN / args[0]), *(flags.get(prev, a) for prev, a in itertools.pairwise(args))]

    with _serving(command, "/ping", env=env, log=work / "serve.log", wait_s=300) as url:
        yield f"{url}/invocations"


def _grey() -> np.ndarray:
    return np.full((24, 24, 3), 128, dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny():
    from clipcite.model.clip import load_model

    return load_model("clipcite-tiny", "", init_seed=0)


MALFORMED = [
    ("not an image", _body([_png(_grey()), base64.b64encode(b"plain text").decode()]), "row 1 of column 'image'"),
    ("empty string", _body([""]), "row 0 of column 'image': corrupt or unreadable image (empty: 0 bytes)"),
    ("30000x30000 PNG header", _body([base64.b64encode(_png_header(30000, 30000)).decode()]), "too many pixels"),
    ("missing column", _body([_png(_grey())], column="picture"), "no 'image' column: expected a column 'image'"),
    ("10,000 labels", _body([_png(_grey())], {"labels": [f"l{i}" for i in range(10_000)]}), "10000 labels: at most"),
]


@pytest.mark.parametrize(("name", "payload", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_request_gets_a_400_that_says_why_and_the_server_keeps_serving(served, name, payload, message):
    answer = requests.post(served, json=payload, timeout=120)
    assert answer.status_code == 400, answer.text[:500]
    said = answer.json()["message"]
    assert message in said, said[-500:]
    # one short line: no dump of the input DataFrame (MLflow prefixes one), no <_io.BytesIO object at 0x...>
    assert "\n" not in said and "object at 0x" not in said and "Failed to" not in said and len(said) < 250, said
    good = requests.post(served, json=_body([_png(_grey())] * 2), timeout=120)
    assert good.status_code == 200 and [p["label"] in ("cat", "dog") for p in good.json()["predictions"]] == [True] * 2


def test_served_predictions_equal_the_in_process_classifier(served, tiny, tmp_path):
    from clipcite.model.classifier import Classifier

    save_model(
        tiny,
        tiny.model.state_dict(),
        tmp_path,
        meta(arch=tiny.name, base_identity=tiny.identity, classnames=("cat", "dog"), template="a {}."),
    )
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (32, 40, 3), dtype=np.uint8) for _ in range(3)]
    answer = requests.post(served, json=_body([_png(a) for a in arrays], {"top_k": 2}), timeout=120)
    assert answer.status_code == 200, answer.text[:500]
    expected = Classifier(tmp_path).predict([base64.b64decode(_png(a)) for a in arrays], top_k=2)
    served_rows = answer.json()["predictions"]
    assert [r["label"] for r in served_rows] == [r["label"] for r in expected]
    assert [r["score"] for r in served_rows] == pytest.approx([r["score"] for r in expected], abs=1e-5)


def test_labels_given_per_request_and_top_k_come_back_over_rest(served):
    """Open vocabulary: the caller's label list replaces the trained classes; top_k ranks them."""
    labels = ["bird", "fish", "horse"]
    rng = np.random.default_rng(1)
    images = [_png(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)) for _ in range(2)]
    answer = requests.post(served, json=_body(images, {"labels": labels, "top_k": 3}), timeout=120)
    assert answer.status_code == 200, answer.text[:500]
    rows = answer.json()["predictions"]
    assert len(rows) == 2
    for row in rows:
        assert row["label"] in labels and row["top_labels"][0] == row["label"]
        assert sorted(row["top_labels"]) == sorted(labels)
        assert row["top_scores"] == sorted(row["top_scores"], reverse=True) and sum(row["top_scores"]) == pytest.approx(
            1
        )
    default = requests.post(served, json=_body(images), timeout=120).json()["predictions"]
    assert {r["label"] for r in default} <= {"cat", "dog"} and "top_labels" not in default[0]


def test_the_load_bench_smoke_on_this_server(served, tmp_path, capsys):
    """bench/serve_load.py's smoke form against this server (``--url``: nothing trained or started): a few
    concurrent requests, then its malformed ones, each a 400 in one line, the server still serving."""
    from bench import serve_load

    assert serve_load.main(["--url", served, "--smoke", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "serve_load.json").read_text())
    assert result["requests"] == 8 and result["errors"] == 0 and result["alive_after"], result
    assert [r["status"] for r in result["malformed"]] == [400] * 5, result["malformed"]
    assert all("\n" not in r["message"] and "object at 0x" not in r["message"] for r in result["malformed"])
