"""Loading images for the models: torch Datasets over table rows (training crops replayable per (seed, id, epoch),
evaluation views) and the DataLoaders around them (built once per run, fed a per-epoch order, a decode-once cache).

Workers that restart every epoch re-import torch and re-open their state each time; a loader built once with
``persistent_workers`` keeps them. Because a persistent worker holds its own copy of the dataset, the epoch cannot
travel as a dataset attribute: the batch sampler (which runs in the main process) yields ``(epoch, index)`` pairs.
The few-shot train set is small; when its decoded pixels fit ``decode_cache_mb`` every image is decoded once per
run instead of once per epoch (the crops are cut from the same RGB pixels, so the tensors are identical).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from clipcite.data import images
from clipcite.data.crops import crop_params, eval_pixels, train_pixels
from clipcite.data.images import decode_image
from clipcite.data.rows import image_bytes
from clipcite.train_params import DEFAULT_RATIO, DEFAULT_SCALE

log = logging.getLogger(__name__)


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
    ``(epoch, i)`` names the epoch itself (what :class:`clipcite.data.loading.EpochBatches` yields to persistent
    workers).

    ``boxes[epoch, i]`` is the crop of image i in that epoch: from :func:`crop_boxes`, or replayed from a teacher
    cache, which stored the same boxes. ``decoded[i]``, when given, is image i's RGB pixels decoded once per run
    (:func:`clipcite.data.loading.decode_all`): the same pixels the per-epoch decode gives. Crops are uint8 [3, S, S]:
    the step normalises each batch (:func:`clipcite.data.crops.model_input`).
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
    (:func:`clipcite.data.crops.model_input`)."""

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


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of the batch order in ``epoch`` (a function of the seed alone: resumable)."""
    return int.from_bytes(hashlib.sha256(f"order:{seed}:{epoch}".encode()).digest()[:8], "little")


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch))).tolist()


class EpochBatches:
    """A batch sampler over ``n`` items: set ``epoch``, then iterate the batches of ``[(epoch, index), ...]``."""

    def __init__(self, n: int, batch_size: int, seed: int, *, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.epoch = 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(self.n, self.seed, self.epoch) if self.shuffle else list(range(self.n))
        for start in range(0, self.n, self.batch_size):
            yield [(self.epoch, i) for i in order[start : start + self.batch_size]]

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


class EpochItems:
    """Fixed batches of indices, the same every epoch, yielded as ``(epoch, index)`` items for the current ``epoch``
    (the teacher cache's pass over every epoch's crops in table order)."""

    def __init__(self, batches: list[list[int]]):
        self.batches = batches
        self.epoch = 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batches:
            yield [(self.epoch, i) for i in batch]

    def __len__(self) -> int:
        return len(self.batches)


def loader_options(num_workers: int, prefetch_factor: int, device: str, *, persistent: bool = True) -> dict:
    """DataLoader keyword arguments: workers kept across epochs, batches prefetched, pinned memory for CUDA."""
    options: dict = {"num_workers": num_workers, "pin_memory": str(device).startswith("cuda")}
    if num_workers > 0:
        options.update(persistent_workers=persistent, prefetch_factor=prefetch_factor)
    return options


def decoded_size_mb(sizes: list[tuple[int, int]]) -> float:
    """Memory of the decoded RGB uint8 pixels of images of these (width, height)."""
    return sum(w * h * 3 for w, h in sizes) / 2**20


def decode_all(rows: list[dict], sizes: list[tuple[int, int]], budget_mb: float, source: str = "") -> list | None:
    """Every row's image as an RGB uint8 array [H, W, 3], or ``None`` when they need more than ``budget_mb``
    (``train.decode_cache_mb``; 0 turns the cache off). ``sizes`` are the (width, height) from the headers. Forked
    DataLoader workers (Linux's default) share the arrays copy-on-write; under ``spawn`` each worker gets a copy."""
    from clipcite.data.images import decode_image
    from clipcite.data.rows import image_bytes

    needed = decoded_size_mb(sizes)
    if budget_mb <= 0 or needed > budget_mb:
        if budget_mb > 0:
            log.info(
                "decoded train images need %.0f MB > train.decode_cache_mb=%g: decoding per epoch", needed, budget_mb
            )
        return None
    arrays = [np.asarray(decode_image(image_bytes(row, source), f"{source}row id={row['id']!r}")) for row in rows]
    log.info(
        "decoded %d train image(s) once for the run: %.0f MB (train.decode_cache_mb=%g)", len(rows), needed, budget_mb
    )
    return arrays
