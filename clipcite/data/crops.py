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

from clipcite.train_params import DEFAULT_RATIO, DEFAULT_SCALE

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


def pixels(image: Image.Image | np.ndarray) -> torch.Tensor:
    """An image's RGB uint8 pixels [3, H, W] from a PIL image or an HxWx3 uint8 array (a channels-first view:
    collating copies it into the batch)."""
    if isinstance(image, Image.Image):
        image = np.array(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected RGB pixels as an HxWx3 uint8 array, got {image.dtype} {image.shape}")
    return torch.from_numpy(image).permute(2, 0, 1)


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 pixels [..., 3, H, W] -> the float tensor a model sees, on the pixels' device.

    The one normalisation rule: torchvision's ``ToTensor`` then ``Normalize``, op for op (to torch's default float
    dtype, divide by 255, subtract the mean, divide by the std), so a batch normalised here equals open_clip's
    per-image transform bit for bit. Loaders ship uint8 pixels (a quarter of float32's bytes through worker queues,
    pinned memory and the host-to-GPU copy) and the step normalises each batch where the model runs."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize takes uint8 pixels, got {images.dtype} (normalised twice?)")
    dtype = torch.get_default_dtype()  # float32 unless a caller changed it, as in ToTensor
    full, mean_t, std_t = _constants(tuple(mean), tuple(std), dtype, str(images.device))
    return images.to(dtype).div(full).sub_(mean_t).div_(std_t)


@functools.lru_cache(maxsize=32)
def _constants(mean: tuple, std: tuple, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, ...]:
    """255, mean and std as tensors on ``device``, made once per device. 255 is a device tensor, not a Python
    number: CUDA divides by a host scalar as a multiply by its reciprocal, one bit away from true division for
    about half the pixel values; dividing by a tensor is true division on every device, as on the CPU."""
    if len(mean) != 3 or len(std) != 3 or 0 in std:
        raise ValueError(f"mean {mean} and std {std}: three values each, no std of 0")
    shape = (3, 1, 1)
    full = torch.full((1, 1, 1), 255, dtype=dtype, device=device)
    return (
        full,
        torch.tensor(mean, dtype=dtype, device=device).view(shape),
        torch.tensor(std, dtype=dtype, device=device).view(shape),
    )


def model_input(images: torch.Tensor, preprocess_cfg: dict, device: str) -> torch.Tensor:
    """A loader's uint8 batch, moved to ``device`` (asynchronously from pinned memory) and normalised there."""
    return normalize(images.to(device, non_blocking=True), preprocess_cfg["mean"], preprocess_cfg["std"])


def to_tensor(image: Image.Image | np.ndarray, mean, std) -> torch.Tensor:
    """One image (PIL or an HxWx3 uint8 array) as the normalised float tensor [3, H, W], contiguous as
    torchvision's are: the per-image form of :func:`normalize`."""
    return normalize(pixels(image), mean, std).contiguous()


def _train_crop(image: Image.Image, box: tuple[int, int, int, int], preprocess_cfg: dict) -> Image.Image:
    top, left, h, w = box
    size = input_size(preprocess_cfg)
    resample = _RESAMPLE.get(preprocess_cfg.get("interpolation", "bicubic"), Image.BICUBIC)
    return image.crop((left, top, left + w, top + h)).resize((size, size), resample)


def train_pixels(image: Image.Image, box: tuple[int, int, int, int], preprocess_cfg: dict) -> torch.Tensor:
    """Crop ``box`` = (top, left, h, w) and resize to the model's input size: uint8 [3, S, S]."""
    return pixels(_train_crop(image, box, preprocess_cfg))


def eval_pixels(image: Image.Image, preprocess_cfg: dict) -> torch.Tensor:
    """CLIP's test transform up to the tensor, exactly as open_clip builds it: uint8 [3, S, S].

    open_clip's own transform is used rather than a re-implementation: its ``resize_mode`` (shortest, longest,
    squash), torchvision's truncating resize and rounding centre crop decide the evaluation numbers, and any
    difference moves top-1 (about 2 points on the toy CLIP for non-square images). Its last two steps, ``ToTensor``
    and ``Normalize``, are :func:`normalize`, run on the batch.
    """
    return pixels(_eval_transform(view_key(preprocess_cfg))(image))


def eval_view(image: Image.Image, preprocess_cfg: dict) -> torch.Tensor:
    """open_clip's whole test transform of one image (:func:`eval_pixels`, normalised)."""
    head = _eval_transform(view_key(preprocess_cfg))
    return to_tensor(head(image), preprocess_cfg["mean"], preprocess_cfg["std"])


@functools.lru_cache(maxsize=16)
def _eval_transform(key: tuple) -> Callable[[Image.Image], Image.Image]:
    """open_clip's test transform without its ``ToTensor`` and ``Normalize`` tail (checked to be just that, with
    this config's mean and std, so that :func:`normalize` finishes it exactly)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2  # heavy import, only where images are seen
    from torchvision.transforms import Compose, Normalize, ToTensor

    cfg = dict(key)
    steps = image_transform_v2(PreprocessCfg(**cfg), is_train=False).transforms
    head, tail = steps[:-2], steps[-2:]
    if not (
        len(tail) == 2
        and isinstance(tail[0], ToTensor)
        and isinstance(tail[1], Normalize)
        and list(tail[1].mean) == list(cfg["mean"])
        and list(tail[1].std) == list(cfg["std"])
        and not any(isinstance(step, ToTensor | Normalize) for step in head)
    ):
        raise RuntimeError(
            f"open_clip's test transform no longer ends in ToTensor, Normalize(mean, std): {steps}. clipcite "
            "splits it there to normalise batches; update clipcite.data.crops for this open_clip version"
        )
    return Compose(head)


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
