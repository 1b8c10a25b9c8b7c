"""torch Datasets over table rows: training crops replayable per (seed, id, epoch), and evaluation views."""

from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import Dataset

from clipcite.crops import crop_params, eval_pixels, train_pixels
from clipcite.data import images
from clipcite.data.images import decode_image
from clipcite.data.table import image_bytes
from clipcite.recipe import DEFAULT_RATIO, DEFAULT_SCALE


def crop_boxes(
    rows: list[dict],
    seed: int,
    epochs: int,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
    source: str = "",
    sizes: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Crop boxes [epochs, N, 4] = (top, left, h, w) from (seed, id, epoch); reads only image headers, or none
    when the caller has the rows' (width, height) already (``sizes``)."""
    boxes = torch.empty(epochs, len(rows), 4, dtype=torch.int32)
    for i, row in enumerate(rows):
        width, height = sizes[i] if sizes is not None else image_size(row, source)
        for epoch in range(epochs):
            boxes[epoch, i] = torch.tensor(crop_params(width, height, seed, row["id"], epoch, scale, ratio))
    return boxes


class CropDataset(Dataset):
    """Item ``i`` is ``(i, crop pixels, label)`` for the current ``epoch`` (set it before iterating); item
    ``(epoch, i)`` names the epoch itself (what :class:`clipcite.loaders.EpochBatches` yields to persistent workers).

    ``boxes[epoch, i]`` is the crop of image i in that epoch: from :func:`crop_boxes`, or replayed from a teacher
    cache, which stored the same boxes. ``decoded[i]``, when given, is image i's RGB pixels decoded once per run
    (:func:`clipcite.loaders.decode_all`): the same pixels the per-epoch decode gives. Crops are uint8 [3, S, S]:
    the step normalises each batch (:func:`clipcite.crops.model_input`).
    """

    def __init__(
        self, rows: list[dict], preprocess_cfg: dict, boxes: torch.Tensor, source: str = "", decoded: list | None = None
    ):
        if boxes.shape[1] != len(rows):
            raise ValueError(f"crop boxes cover {boxes.shape[1]} images, the split has {len(rows)}")
        self.rows, self.cfg, self.boxes, self.source, self.decoded = rows, preprocess_cfg, boxes, source, decoded
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int | tuple[int, int]):
        epoch, i = item if isinstance(item, tuple) else (self.epoch, item)
        row = self.rows[i]
        if self.decoded is not None:
            image = Image.fromarray(self.decoded[i])
        else:
            image = decode_image(image_bytes(row, self.source), f"{self.source}row id={row['id']!r}")
        box = tuple(int(v) for v in self.boxes[epoch, i])
        return i, train_pixels(image, box, self.cfg), int(row["label"])


class EvalDataset(Dataset):
    """Item ``i`` is ``(i, centre-crop pixels, label)``: uint8 [3, S, S], normalised per batch by the step
    (:func:`clipcite.crops.model_input`)."""

    def __init__(self, rows: list[dict], preprocess_cfg: dict, source: str = ""):
        self.rows, self.cfg, self.source = rows, preprocess_cfg, source

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        image = decode_image(image_bytes(row, self.source), f"{self.source}row id={row['id']!r}")
        return i, eval_pixels(image, self.cfg), int(row["label"])


def image_size(row: dict, source: str = "") -> tuple[int, int]:
    """(width, height) of a row's image from its header."""
    return images.image_size(image_bytes(row, source), f"{source}row id={row['id']!r}")
