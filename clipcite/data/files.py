"""Read image files into table rows, checking each one decodes (shared by the converters)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from clipcite import storage
from clipcite.data.images import VERIFY_MODES, ImageDecodeError, check_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass(frozen=True)
class FileEntry:
    path: Path | str  # a local path or an s3:// URI
    id: str
    label: int
    classname: str
    domain: str
    split: str


@dataclass
class SkipCounter:
    """Counts images skipped with ``skip_bad_images``; the converters report it."""

    skipped: int = 0
    examples: list[str] | None = None

    def add(self, message: str) -> None:
        self.skipped += 1
        self.examples = [*(self.examples or [])[:4], message]


def rows_from_files(
    entries: Iterable[FileEntry],
    *,
    verify: str = "full",
    skip_bad_images: bool = False,
    counter: SkipCounter | None = None,
    total: int | None = None,
) -> Iterator[dict]:
    """Yield table rows with the files' original bytes; a bad file raises, or is skipped and counted."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    counter = counter if counter is not None else SkipCounter()
    for entry in tqdm(entries, total=total, desc="reading images", unit="img", leave=False):
        try:
            try:
                data = storage.read_bytes(entry.path)
            except OSError as e:
                raise ImageDecodeError(f"{entry.path}: cannot read file ({e.strerror or e})") from e
            check_image(data, str(entry.path), verify)
        except ImageDecodeError as e:
            if not skip_bad_images:
                raise ImageDecodeError(f"{e} -- fix or remove the file, or pass --skip-bad-images") from e
            counter.add(str(e))
            log.warning("skipping %s", e)
            continue
        yield {
            "id": entry.id,
            "image": data,
            "path": None,
            "label": entry.label,
            "classname": entry.classname,
            "domain": entry.domain,
            "split": entry.split,
        }


def is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
