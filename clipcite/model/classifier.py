"""An open-vocabulary image classifier over a saved clipcite model: what the registered MLflow model serves.

Labels are free text: the model scores each image against ``template.format(label)`` for whatever labels the
caller passes, so a model trained on some classes still names new ones (that is what CLIP-CITE preserves).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipcite.data.crops import eval_view
from clipcite.data.images import decode_image
from clipcite.data.prompts import prompts_for
from clipcite.model.clip import class_features, load_saved

MAX_LABELS = 4096  # per call: every label is a prompt to encode (10,000 took 42 s with toyclip on 2 busy CPU cores)


class Classifier:
    """A fine-tuned model with its trained class names and template as defaults."""

    def __init__(self, model_dir: str | Path, device: str = "cpu"):
        self.loaded, self.meta = load_saved(model_dir, device=device)
        self.device = device
        self.labels: list[str] = list(self.meta.classnames)
        self.template: str = self.meta.template or "a photo of a {}."
        self.loaded.model.eval()

    @torch.no_grad()
    def predict(
        self,
        images: Sequence[bytes | np.ndarray | Image.Image],
        labels: Sequence[str] | None = None,
        template: str | None = None,
        top_k: int = 1,
        item: str = "image {}",
    ) -> list[dict]:
        """One dict per image: ``label``, ``score`` (softmax probability over ``labels``), and with top_k > 1
        ``top_labels``/``top_scores``. ``item`` names the i-th image in errors (the served model: its row and
        column)."""
        labels = list(labels) if labels else self.labels
        if not labels:
            raise ValueError("no labels: pass labels=[...] (the model has no trained class names)")
        if len(labels) > MAX_LABELS:
            raise ValueError(f"{len(labels)} labels: at most {MAX_LABELS} per call")
        if len(images) == 0:
            raise ValueError("no images: pass at least one")
        if len(set(labels)) != len(labels):
            raise ValueError(
                f"labels must be distinct; duplicates: {sorted({x for x in labels if labels.count(x) > 1})}"
            )
        k = max(1, min(int(top_k), len(labels)))
        model, cfg = self.loaded.model, self.loaded.preprocess_cfg
        text = class_features(self.loaded, prompts_for(template or self.template, labels), 256, self.device)
        batch = torch.stack([eval_view(to_image(x, i, item), cfg) for i, x in enumerate(images)]).to(self.device)
        features = model.encode_image(batch, normalize=True).float()
        probs = (model.logit_scale.exp().float() * features @ text.T).softmax(dim=1).cpu()
        scores, index = probs.topk(k, dim=1)
        results = []
        for row_scores, row_index in zip(scores.tolist(), index.tolist(), strict=True):
            entry = {"label": labels[row_index[0]], "score": row_scores[0]}
            if top_k > 1:
                entry["top_labels"] = [labels[i] for i in row_index]
                entry["top_scores"] = row_scores
            results.append(entry)
        return results


def to_image(value: bytes | np.ndarray | Image.Image, index: int = 0, item: str = "image {}") -> Image.Image:
    """Encoded bytes (PNG, JPEG, ...), an HxWx3 / HxW uint8 array, or a PIL image, as an RGB image; errors name the
    image as ``item.format(index)``."""
    where = item.format(index)
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, bytes | bytearray | memoryview):
        return decode_image(bytes(value), where)  # ImageDecodeError is a ValueError
    if not isinstance(value, np.ndarray | list | tuple):  # None, a number, a dict: say what it is, not its repr
        raise ValueError(f"{where}: expected encoded image bytes or a uint8 array, got {type(value).__name__}")
    array = np.asarray(value)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(
            f"{where}: expected encoded bytes or a uint8 array of shape HxW or HxWxC (C in 1, 3, 4), "
            f"got dtype {array.dtype} shape {array.shape}"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return Image.fromarray(array).convert("RGB")
