"""Image folders as a data team fills them: files under ``<split>/<class>/``, drawn from the toy world."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from clipcite.toyworld.world import render


def drop_images(root: Path, classname: str, split: str, start: int, count: int) -> None:
    """Save ``count`` images of ``classname`` under ``<root>/<split>/<class>/``, numbered from ``start``."""
    rng = np.random.default_rng([sum(map(ord, classname)), start, len(split)])
    folder = root / split / classname.replace(" ", "_")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        Image.fromarray(render(classname, "photo", rng)).save(folder / f"img{i:03d}.png")
