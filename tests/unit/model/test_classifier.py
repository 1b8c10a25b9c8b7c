"""The in-process classifier behind the served model: input kinds (encoded bytes, arrays, grey), labels and top-k,
and the errors a client sees."""

import base64
import io
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipcite.model.classifier import Classifier, to_image
from clipcite.model.clip import save_model
from clipcite.records import MODEL_ARTIFACT
from clipcite.tracking.served_model import BadInput, ClassifierModel
from tests.support.records import meta


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 28, 3), colour, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_classifier_inputs_labels_and_errors(tiny, tmp_path):
    save_model(tiny, tiny.model.state_dict(), tmp_path, meta(classnames=["cat", "dog"], template="a {}."))
    classifier = Classifier(tmp_path)
    grey = np.add.outer(np.arange(16), np.arange(16)).astype(np.uint8) * 8  # a gradient, not a flat image
    images = [_png((200, 0, 0)), np.stack([grey] * 3, axis=-1), grey]
    out = classifier.predict(images)
    assert [set(r) for r in out] == [{"label", "score"}] * 3 and {r["label"] for r in out} <= {"cat", "dog"}
    assert all(0 < r["score"] <= 1 for r in out)
    assert all(r["score"] >= 0.5 for r in out)  # the most probable of two labels
    assert out[2]["label"] == out[1]["label"] and out[2]["score"] == pytest.approx(out[1]["score"], abs=1e-6)
    out = classifier.predict(images[:1], labels=["a", "b", "c"], top_k=5)
    assert out[0]["top_labels"][0] == out[0]["label"] and len(out[0]["top_labels"]) == 3
    assert sum(out[0]["top_scores"]) == pytest.approx(1, abs=1e-5)
    with pytest.raises(ValueError, match="labels must be distinct"):
        classifier.predict(images[:1], labels=["a", "a"])
    with pytest.raises(ValueError, match="image 0: corrupt or unreadable image"):
        to_image(b"not an image")
    with pytest.raises(ValueError, match="image 2: expected encoded bytes or a uint8 array"):
        to_image(np.zeros((4, 4, 3), np.float32), 2)


BAD_INPUT = [  # (what the caller sent, params, what the 400 must say)
    (pd.DataFrame({"image": [_png(0), b"plain text"]}), None, "row 1 of column 'image': corrupt or unreadable image"),
    (pd.DataFrame({"image": [b""]}), None, "row 0 of column 'image': corrupt or unreadable image (empty: 0 bytes)"),
    (pd.DataFrame({"picture": [_png(0)]}), None, "no 'image' column: expected a column 'image' of images"),
    (pd.DataFrame({"image": [None]}), None, "row 0 of column 'image': expected encoded image bytes or a uint8 array"),
    ({"image": ["%%%"]}, None, "row 0 of column 'image': not base64"),
    (pd.DataFrame({"image": [_png(0)]}), {"labels": ["a"] * 5000}, "5000 labels: at most 4096 per call"),
]


@pytest.mark.parametrize(("model_input", "params", "message"), BAD_INPUT)
def test_the_served_model_says_in_one_short_line_which_row_and_column_is_bad(
    tiny, tmp_path, model_input, params, message
):
    """The pyfunc's 400 names the row and column and what was expected: no DataFrame dump, no object reprs."""
    save_model(tiny, tiny.model.state_dict(), tmp_path, meta(classnames=["cat", "dog"], template="a {}."))
    served = ClassifierModel()
    served.load_context(SimpleNamespace(artifacts={MODEL_ARTIFACT: str(tmp_path)}))
    with pytest.raises(BadInput) as raised:
        served.predict(None, model_input, params)
    error = raised.value
    # What MLflow's scoring server does to any MlflowException before answering (mlflow 3.17 invocations)
    error.message = f"Failed to predict data '{model_input}'. \nError: {error.message}"
    body = json.loads(error.serialize_as_json())
    assert error.get_http_status_code() == 400 and message in body["message"], body["message"]
    assert len(body["message"]) < 160 and "object at 0x" not in body["message"] and "Failed to" not in body["message"]


def test_an_image_pil_cannot_identify_is_named_without_pil_internals():
    with pytest.raises(ValueError) as raised:
        to_image(base64.b64decode("aGVsbG8="), 3)
    assert (
        str(raised.value)
        == "image 3: corrupt or unreadable image (5 bytes in no format PIL reads: expected PNG, JPEG, ...)"
    )
