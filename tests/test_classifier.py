"""The in-process classifier behind the served model: input kinds (encoded bytes, arrays, grey), labels and top-k,
and the errors a client sees."""

import io

import numpy as np
import pytest
from PIL import Image

from clipcite.classifier import Classifier, to_image
from clipcite.models import save_model


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 28, 3), colour, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_classifier_inputs_labels_and_errors(tiny, tmp_path):
    save_model(tiny, tiny.model.state_dict(), tmp_path, {"classnames": ["cat", "dog"], "template": "a {}."})
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
