"""Synthetic photo-like JPEGs for the throughput benches (no dataset download): smooth colour fields with texture,
so they compress and decode like photographs (~80 KB at 500x375, quality 90; ImageNet's average is ~110 KB), not
like noise or flat colour."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def jpeg_bytes(rng: np.random.Generator, width: int = 500, height: int = 375, quality: int = 90) -> bytes:
    coarse = rng.integers(0, 256, size=(max(2, height // 48), max(2, width // 48), 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    texture = rng.normal(0, 12, size=(height, width, 1))
    pixels = np.clip(field + texture, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def jpeg_rows(n: int, *, width: int = 500, height: int = 375, classes: int = 10, seed: int = 0) -> list[dict]:
    """``n`` table-like rows (id, image bytes, label) with distinct images."""
    rng = np.random.default_rng(seed)
    return [{"id": f"img{i:06d}", "image": jpeg_bytes(rng, width, height), "label": i % classes} for i in range(n)]
