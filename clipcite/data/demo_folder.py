"""A small generated ImageFolder for the CPU demo chain and the tests (no downloads).

Classes are colour x shape ("red circle"); two domains draw them differently ("photo": filled on a noisy
background, "sketch": outlines on white). The layout is ``split/domain/class/*.png``.

Why a second synthetic world beside ``clipcite/toyworld``: the toy world is the offline benchmark (a pretrained
toyclip, tables written directly); this one is a folder of image files in seconds, so the tests enter data the way
users' data enters (ingest from a folder tree) and run the random ``clipcite-tiny`` model on it.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220)}
SHAPES = ("circle", "square", "triangle")


def classnames(num_classes: int = 6) -> list[str]:
    names = [f"{c} {s}" for s, c in itertools.product(SHAPES, COLOURS)]
    return names[:num_classes]


def draw(classname: str, domain: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    colour_name, shape = classname.split(" ")
    colour = COLOURS[colour_name]
    if domain == "sketch":
        image = Image.new("RGB", (size, size), (255, 255, 255))
    else:
        noise = rng.integers(90, 200, size=(size, size, 3), dtype=np.uint8)
        image = Image.fromarray(noise, "RGB")
    pen = ImageDraw.Draw(image)
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
    box = (cx - r, cy - r, cx + r, cy + r)
    fill, outline = (None, colour) if domain == "sketch" else (colour, None)
    if shape == "circle":
        pen.ellipse(box, fill=fill, outline=outline, width=3)
    elif shape == "square":
        pen.rectangle(box, fill=fill, outline=outline, width=3)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill, outline=outline, width=3)
    return image


def make_imagefolder(
    root: str | Path,
    *,
    num_classes: int = 6,
    per_split: dict[str, int] | None = None,
    domains: tuple[str, ...] = ("photo", "sketch"),
    seed: int = 0,
    size: int = 48,
) -> Path:
    """Write ``root/<split>/<domain>/<class>/<n>.png``; deterministic for a seed."""
    root = Path(root)
    per_split = per_split or {"train": 12, "val": 4, "test": 8}
    for split_i, (split, count) in enumerate(per_split.items()):
        for domain_i, domain in enumerate(domains):
            for class_i, name in enumerate(classnames(num_classes)):
                rng = np.random.default_rng([seed, split_i, domain_i, class_i])
                folder = root / split / domain / name.replace(" ", "_")
                folder.mkdir(parents=True, exist_ok=True)
                for n in range(count):
                    draw(name, domain, rng, size).save(folder / f"{n:03d}.png")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the demo ImageFolder (split/domain/class).")
    parser.add_argument("--out", required=True)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_imagefolder(args.out, num_classes=args.classes, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
