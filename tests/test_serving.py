"""The logged classifier behind ``mlflow models serve`` on loopback: malformed requests get a 400 that says what is
wrong, and the server keeps serving. (The load benchmark is ``bench/serve_load.py``.)"""

import base64
import io
import os
import struct
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

from clipcite import tracking
from clipcite.models import save_model

from .servers import BIN, _serving


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
    save_model(tiny, tiny.model.state_dict(), work / "model", {"classnames": ["cat", "dog"], "template": "a {}."})
    uri = f"sqlite:///{work / 'mlflow.db'}"
    run_id = tracking.open_pipeline_run(uri, "serving")
    with tracking.step_run(uri, run_id, "register", system_metrics=False) as step:
        model_uri = tracking.log_classifier(step, work / "model", example_images=[base64.b64decode(_png(_grey()))])
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    def command(port: int) -> list[str]:
        serve = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
        return [*serve, "-h", "127.0.0.1", "-p", str(port), "-w", "1"]

    with _serving(command, "/ping", env=env, log=work / "serve.log", wait_s=300) as url:
        yield f"{url}/invocations"


def _grey() -> np.ndarray:
    return np.full((24, 24, 3), 128, dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny():
    from clipcite.models import load_model

    return load_model("clipcite-tiny", "", init_seed=0)


MALFORMED = [
    ("not an image", _body([base64.b64encode(b"plain text").decode()]), "image 0: not a decodable image"),
    ("empty string", _body([""]), "image 0: not a decodable image"),
    ("30000x30000 PNG header", _body([base64.b64encode(_png_header(30000, 30000)).decode()]), "too many pixels"),
    ("missing column", _body([_png(_grey())], column="picture"), "missing inputs ['image']"),
    ("10,000 labels", _body([_png(_grey())], {"labels": [f"l{i}" for i in range(10_000)]}), "10000 labels: at most"),
]


@pytest.mark.parametrize(("name", "payload", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_request_gets_a_400_that_says_why_and_the_server_keeps_serving(served, name, payload, message):
    answer = requests.post(served, json=payload, timeout=120)
    assert answer.status_code == 400, answer.text[:500]
    assert message in answer.json()["message"], answer.json()["message"][-500:]
    good = requests.post(served, json=_body([_png(_grey())] * 2), timeout=120)
    assert good.status_code == 200 and [p["label"] in ("cat", "dog") for p in good.json()["predictions"]] == [True] * 2


def test_served_predictions_equal_the_in_process_classifier(served, tiny, tmp_path):
    from clipcite.classifier import Classifier

    save_model(tiny, tiny.model.state_dict(), tmp_path, {"classnames": ["cat", "dog"], "template": "a {}."})
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (32, 40, 3), dtype=np.uint8) for _ in range(3)]
    answer = requests.post(served, json=_body([_png(a) for a in arrays], {"top_k": 2}), timeout=120)
    assert answer.status_code == 200, answer.text[:500]
    expected = Classifier(tmp_path).predict([base64.b64decode(_png(a)) for a in arrays], top_k=2)
    served_rows = answer.json()["predictions"]
    assert [r["label"] for r in served_rows] == [r["label"] for r in expected]
    assert [r["score"] for r in served_rows] == pytest.approx([r["score"] for r in expected], abs=1e-5)
