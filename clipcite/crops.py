"""Deterministic random-resized crops and the image tensors the models see.

The training augmentation is a random resized crop and nothing else (method.md "Training recipe"). Its parameters
for (image, epoch) come from ``(seed, image id, epoch)`` alone, so the teacher's features for every crop can be
computed once and replayed (method.md "Teacher outputs can be cached exactly"). The sampling rule is torchvision's
``RandomResizedCrop.get_params`` (10 tries, then a centre crop), driven by a generator seeded from a hash.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from clipcite.recipe import DEFAULT_RATIO, DEFAULT_SCALE

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def crop_params(
    width: int,
    height: int,
    seed: int,
    image_id: str,
    epoch: int,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) for this image in this epoch."""
    digest = hashlib.sha256(f"{seed}:{image_id}:{epoch}".encode()).digest()
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height  # fallback: the largest centre crop within the ratio range
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def to_tensor(image: Image.Image, mean, std) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    return (tensor - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def train_view(image: Image.Image, box: tuple[int, int, int, int], preprocess_cfg: dict) -> torch.Tensor:
    """Crop ``box`` = (top, left, h, w) and resize to the model's input size."""
    top, left, h, w = box
    size = input_size(preprocess_cfg)
    resample = _RESAMPLE.get(preprocess_cfg.get("interpolation", "bicubic"), Image.BICUBIC)
    crop = image.crop((left, top, left + w, top + h)).resize((size, size), resample)
    return to_tensor(crop, preprocess_cfg["mean"], preprocess_cfg["std"])


def eval_view(image: Image.Image, preprocess_cfg: dict) -> torch.Tensor:
    """CLIP's test transform, exactly as open_clip builds it (``image_transform_v2(cfg, is_train=False)``).

    open_clip's own transform is used rather than a re-implementation: its ``resize_mode`` (shortest, longest,
    squash), torchvision's truncating resize and rounding centre crop decide the evaluation numbers, and any
    difference moves top-1 (about 2 points on the toy CLIP for non-square images).
    """
    return _eval_transform(view_key(preprocess_cfg))(image)


@functools.lru_cache(maxsize=16)
def _eval_transform(key: tuple) -> Callable[[Image.Image], torch.Tensor]:
    from open_clip.transform import PreprocessCfg, image_transform_v2  # heavy import, only where images are seen

    return image_transform_v2(PreprocessCfg(**dict(key)), is_train=False)


def view_key(preprocess_cfg: dict) -> tuple:
    """The fields of a preprocessing config that decide its eval view, hashable (JSON turns open_clip's tuples into
    lists): configs with equal keys give identical tensors from the same image (evaluation shares a pass by it)."""
    fields = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")
    return tuple(
        sorted((k, tuple(v) if isinstance(v, list | tuple) else v) for k, v in preprocess_cfg.items() if k in fields)
    )


def input_size(preprocess_cfg: dict) -> int:
    """The model's square input side from its preprocessing config."""
    size = preprocess_cfg["size"]
    return int(size[0] if isinstance(size, list | tuple) else size)
