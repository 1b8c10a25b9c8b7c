"""Image folders as data sources: a local directory or an ``s3://`` prefix that grows as images arrive.

Scheduled retraining points the pipeline at such a folder. Each run lists it (the snapshot: every file with its
size and modification time or ETag, and a digest over them), and turns what is there now into an image table, so
new images and new class folders are picked up without any configuration.

The layout is read from the folder depth (``class/img``, ``domain/class/img`` or ``split/class/img`` when the top
folders are split names, ``split/domain/class/img``), or set in an optional ``clipcite-source.yaml`` at the root
(``layout``, ``dataset``, ``template``, ``split``, ``domain``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from clipcite import storage
from clipcite.data.files import IMAGE_SUFFIXES, FileEntry, SkipCounter, rows_from_files
from clipcite.data.imagefolder import layout_entries
from clipcite.data.prompts import template_for
from clipcite.data.table import ClassList, snapshot, write_table

log = logging.getLogger(__name__)
SOURCE_FILE = "clipcite-source.yaml"
SPLIT_NAMES = {"train", "val", "test"}


def is_table(uri: str) -> bool:
    return bool(storage.list_files(uri, suffix=".parquet"))


def source_snapshot(uri: str) -> dict:
    """What a source holds now: a table's shards, or a folder's images (object list and digest)."""
    if is_table(uri):
        return {**snapshot(uri), "kind": "table"}
    if not storage.is_s3(uri) and not Path(uri).exists():
        raise FileNotFoundError(f"{uri}: does not exist; pass an image table folder or a folder of images")
    listing = storage.walk(uri)
    files = [{"name": rel, **info} for rel, info in _images(listing)]
    if not files:
        raise FileNotFoundError(
            f"{uri}: neither an image table (part-*.parquet + classes.json) nor a folder of images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    h = hashlib.sha256()
    for entry in files:
        h.update(json.dumps(entry, sort_keys=True).encode())
    if any(rel == SOURCE_FILE for rel, _ in listing):  # from the listing above, not another request
        h.update(storage.read_bytes(storage.join(uri, SOURCE_FILE)))
    return {"uri": uri, "digest": h.hexdigest(), "files": files, "kind": "folder"}


def _images(listing: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The image files of a :func:`storage.walk` listing."""
    return [(rel, info) for rel, info in listing if "." + rel.rsplit(".", 1)[-1].lower() in IMAGE_SUFFIXES]


def read_settings(uri: str) -> dict:
    path = storage.join(uri, SOURCE_FILE)
    if not storage.exists(path):
        return {}
    settings = yaml.safe_load(storage.read_text(path)) or {}
    unknown = set(settings) - {"layout", "dataset", "template", "split", "domain"}
    if not isinstance(settings, dict) or unknown:
        raise ValueError(f"{path}: expected keys layout, dataset, template, split, domain; unknown {sorted(unknown)}")
    return settings


def detect_layout(paths: list[str], where: str) -> str:
    """The layout from the depth of the image files; all images must be at the same depth."""
    depths = {p.count("/") for p in paths}
    if len(depths) != 1:
        deepest = max(paths, key=lambda p: p.count("/"))
        shallowest = min(paths, key=lambda p: p.count("/"))
        raise ValueError(
            f"{where}: images at different depths ({shallowest!r} vs {deepest!r}); put every image at the same "
            f"level or set 'layout' in {SOURCE_FILE}"
        )
    depth = depths.pop()
    if depth == 1:
        return "class"
    if depth == 2:
        return "split/class" if {p.split("/")[0] for p in paths} <= SPLIT_NAMES else "domain/class"
    if depth == 3:
        return "split/domain/class"
    raise ValueError(f"{where}: images {depth} folders deep; expected class/, domain/class/ or split/domain/class/")


def scan_folder(uri: str, images: list[str] | None = None) -> tuple[list[FileEntry], ClassList]:
    """Entries (paths are URIs) and the classes (sorted class folder names) of an image folder source; ``images``
    (relative paths, e.g. from a snapshot) instead of listing the folder again."""
    settings = read_settings(uri)
    images = [rel for rel, _ in _images(storage.walk(uri))] if images is None else images
    layout = settings.get("layout") or detect_layout(images, uri)
    entries, names = layout_entries(
        uri, images, layout, split=settings.get("split", "train"), domain=settings.get("domain", "default")
    )
    named = settings.get("dataset", "")
    # Without a source file the folder's own name is the dataset's (what the card and the registry show); only a
    # dataset named in the file picks a benchmark's prompt template.
    dataset = named or uri.rstrip("/").rsplit("/", 1)[-1]
    classes = ClassList(tuple(names), template_for(named, settings.get("template", "")), dataset)
    return entries, classes


@contextlib.contextmanager
def as_table(source: dict) -> Iterator[str]:
    """For a :func:`source_snapshot`: the table itself, or a temporary table of exactly the images the snapshot
    listed (files that arrive later wait for the next run, so the recorded snapshot is what was used)."""
    uri = source["uri"]
    if source["kind"] == "table":
        yield uri
        return
    entries, classes = scan_folder(uri, [f["name"] for f in source["files"]])
    with tempfile.TemporaryDirectory(prefix="clipcite-source-") as tmp:
        counter = SkipCounter()
        rows = rows_from_files(entries, verify="header", counter=counter, total=len(entries))
        counts = write_table(rows, f"{tmp}/table", classes)
        log.info("read %s: %d images, %d classes", uri, counts["rows"], len(classes.names))
        yield f"{tmp}/table"
