"""The teacher cache: the frozen CLIP's outputs computed once and replayed (method.md "Teacher outputs...").

A cache folder holds ``teacher.safetensors`` (``text`` [C, D] for every class prompt, ``image`` [E, N, D] for every
(epoch, train image) crop, ``boxes`` [E, N, 4] the crops used) and ``teacher.json`` (the teacher's identity, the
seed, image ids, prompts, crop settings). Training refuses a cache that does not match what it is about to do.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from clipcite.data.crops import input_size, model_input
from clipcite.data.loading import CropDataset, EpochItems, crop_boxes, decode_all, image_size, loader_options
from clipcite.model.clip import LoadedModel, encode_texts
from clipcite.model.nonfinite import require_finite, row_ids
from clipcite.model.precision import autocast as precision_autocast
from clipcite.model.precision import resolve_precision
from clipcite.training import distributed

log = logging.getLogger(__name__)

TENSORS_FILE = "teacher.safetensors"
META_FILE = "teacher.json"


class CacheMismatchError(ValueError):
    """A teacher cache made for another model, seed, split, prompt set or crop setting."""


@dataclass(frozen=True)
class CacheMeta:
    identity: str
    seed: int
    epochs: int
    ids: list[str]
    prompts: list[str]
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    image_size: int
    dtype: str
    precision: str = "fp32"  # the autocast the image features were computed under (older caches: fp32 on CPU)


@dataclass
class TeacherCache:
    meta: CacheMeta
    text: torch.Tensor  # [C, D], L2-normalised
    image: torch.Tensor  # [E, N, D], L2-normalised
    boxes: torch.Tensor  # [E, N, 4]


@torch.no_grad()
def build_cache(
    teacher: LoadedModel,
    rows: list[dict],
    prompts: list[str],
    *,
    seed: int,
    epochs: int,
    crop_scale: tuple[float, float],
    crop_ratio: tuple[float, float],
    batch_size: int = 256,
    device: str = "cpu",
    dtype: str = "float32",
    precision: str = "auto",
    num_workers: int = 0,
    decode_cache_mb: float = 0.0,
    source: str = "",
) -> TeacherCache:
    """Run the frozen teacher over every class prompt and every (epoch, image) crop, under the autocast that
    ``precision`` (the run's ``train.precision``) gives on ``device``, like the online teacher in training.
    Under several ranks each computes its share of the batches and every rank returns the whole cache. One
    DataLoader serves every epoch; the images are decoded once when their pixels fit ``decode_cache_mb``."""
    model = teacher.model.to(device).eval()
    text = encode_texts(model, teacher.tokenizer, prompts, batch_size, device)
    require_finite(text, f"{source}teacher text features; check the base model", list(prompts))
    sizes = [image_size(r, source) for r in rows]  # one header read per image, for the boxes and the cache
    boxes = crop_boxes(rows, seed, epochs, crop_scale, crop_ratio, source, sizes=sizes)
    decoded = decode_all(rows, sizes, decode_cache_mb, source) if decode_cache_mb > 0 else None
    dataset = CropDataset(rows, teacher.preprocess_cfg, boxes, source, decoded=decoded)
    image = torch.zeros(epochs, len(rows), text.shape[1])  # zeros: the ranks' parts are summed
    batches = EpochItems(distributed.shard_batches(len(rows), batch_size))
    loader = DataLoader(dataset, batch_sampler=batches, **loader_options(num_workers, 2, device))
    autocast = precision_autocast(device, precision)
    for epoch in tqdm(range(epochs), desc="teacher crops", unit="epoch"):
        batches.epoch = epoch
        for index, pixels, _ in loader:
            images = model_input(pixels, teacher.preprocess_cfg, device)
            with autocast:
                features = model.encode_image(images, normalize=True)
            what = f"{source}teacher image features, epoch {epoch + 1}; check the base model"
            require_finite(features, what, row_ids(rows, index))
            image[epoch, index] = features.float().cpu()
    image = distributed.combine(image)
    size = input_size(teacher.preprocess_cfg)
    meta = CacheMeta(
        identity=teacher.identity,
        seed=seed,
        epochs=epochs,
        ids=[r["id"] for r in rows],
        prompts=list(prompts),
        crop_scale=tuple(crop_scale),
        crop_ratio=tuple(crop_ratio),
        image_size=size,
        dtype=dtype,
        precision=resolve_precision(device, precision),
    )
    store = getattr(torch, dtype)
    return TeacherCache(meta, text.cpu().to(store), image.to(store), boxes)


def save_cache(cache: TeacherCache, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {"text": cache.text.contiguous(), "image": cache.image.contiguous(), "boxes": cache.boxes.contiguous()}
    save_file(tensors, str(out_dir / TENSORS_FILE))
    (out_dir / META_FILE).write_text(json.dumps(asdict(cache.meta), indent=1))


def load_cache(cache_dir: Path) -> TeacherCache:
    meta_path = Path(cache_dir) / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not a teacher cache (run cache-teacher first)")
    body = json.loads(meta_path.read_text())
    body["crop_scale"], body["crop_ratio"] = tuple(body["crop_scale"]), tuple(body["crop_ratio"])
    tensors = load_file(str(Path(cache_dir) / TENSORS_FILE))
    return TeacherCache(CacheMeta(**body), tensors["text"].float(), tensors["image"].float(), tensors["boxes"])


def check_cache(
    cache: TeacherCache,
    *,
    identity: str,
    seed: int,
    epochs: int,
    ids: list[str],
    prompts: list[str],
    crop_scale: tuple[float, float],
    crop_ratio: tuple[float, float],
    where: str = "teacher cache",
) -> None:
    """Raise :class:`CacheMismatchError` naming the first thing that differs."""
    meta = cache.meta
    problems = []
    if meta.identity != identity:
        problems.append(f"it was made with model {meta.identity!r}, training uses {identity!r}")
    if meta.seed != seed:
        problems.append(f"it was made with seed {meta.seed}, training uses seed {seed}")
    if meta.epochs < epochs:
        problems.append(f"it holds crops for {meta.epochs} epoch(s), training needs {epochs}")
    if meta.ids != list(ids):
        problems.append(f"its {len(meta.ids)} image ids differ from the {len(ids)} of the train split")
    if meta.prompts != list(prompts):
        problems.append("its class prompts differ from the train split's (class names or template changed)")
    if (tuple(meta.crop_scale), tuple(meta.crop_ratio)) != (tuple(crop_scale), tuple(crop_ratio)):
        problems.append(f"its crop settings {meta.crop_scale}/{meta.crop_ratio} differ from {crop_scale}/{crop_ratio}")
    if problems:
        raise CacheMismatchError(
            f"{where} does not match this run: {'; '.join(problems)}. Rebuild it with "
            "cache-teacher for this model, seed and split."
        )
