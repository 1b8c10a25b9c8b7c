"""The Parquet image table: one row per image, a directory of shards plus ``classes.json``.

Columns (architecture.md, "Data contracts"): ``id`` (stable string), ``image`` (original encoded bytes) or ``path``
(a file the image can be read from), ``label`` (int), ``classname``, ``domain``, ``split``. The directory holds
``part-00000.parquet``, ``part-00001.parquet``... and ``classes.json`` (class names in label order, the prompt
template, the dataset name).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from clipcite import storage

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("path", pa.string()),
        ("label", pa.int64()),
        ("classname", pa.string()),
        ("domain", pa.string()),
        ("split", pa.string()),
    ]
)
REQUIRED_COLUMNS = ("id", "label", "classname", "domain", "split")
CLASSES_FILE = "classes.json"
SHARD_BYTES = 256 * 1024 * 1024  # keeps one shard well inside a worker's memory


@dataclass(frozen=True)
class ClassList:
    """``classes.json``: the class names in label order, their prompt template and the dataset they come from."""

    names: tuple[str, ...]
    template: str = "a photo of a {}."
    dataset: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        body = {"classnames": list(self.names), "template": self.template, "dataset": self.dataset, **self.extra}
        return json.dumps(body, indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "classes.json") -> ClassList:
        try:
            body = json.loads(text)
        except json.JSONDecodeError as e:
            raise TableError(f"{source}: not valid JSON ({e})") from e
        if not isinstance(body, dict) or "classnames" not in body:
            raise ValueError(f"{source}: missing the 'classnames' list")
        extra = {k: v for k, v in body.items() if k not in ("classnames", "template", "dataset")}
        return cls(tuple(body["classnames"]), body.get("template", cls.template), body.get("dataset", ""), extra)


class TableError(ValueError):
    """A shard or ``classes.json`` that cannot be used as it is; the message names the object and what to fix."""


class ImageDecodeError(ValueError):
    """An image that cannot be decoded; the message names where it came from."""


def write_table(
    rows: Iterable[dict], out_uri: str, classes: ClassList, shard_bytes: int = SHARD_BYTES
) -> dict[str, int]:
    """Write rows as a sharded table directory at ``out_uri`` (staged: all or nothing). Returns counts."""
    counts = {"rows": 0, "shards": 0}
    with storage.staged_dir(out_uri) as tmp:
        batch: list[dict] = []
        size = 0
        for row in rows:
            row = {name: row.get(name) for name in SCHEMA.names}
            batch.append(row)
            size += len(row["image"] or b"") + 64
            if size >= shard_bytes:
                _write_shard(batch, tmp, counts)
                batch, size = [], 0
        if batch or counts["shards"] == 0:
            _write_shard(batch, tmp, counts)
        (tmp / CLASSES_FILE).write_text(classes.to_json())
    return counts


def _write_shard(batch: list[dict], directory: Path, counts: dict[str, int]) -> None:
    table = pa.Table.from_pylist(batch, schema=SCHEMA)
    pq.write_table(table, directory / f"part-{counts['shards']:05d}.parquet")
    counts["shards"] += 1
    counts["rows"] += len(batch)


def shard_uris(table_uri: str) -> list[str]:
    shards = storage.list_files(table_uri, suffix=".parquet")
    if not shards:
        raise FileNotFoundError(f"{table_uri}: no Parquet shards (part-*.parquet) found")
    return shards


def read_classes(table_uri: str) -> ClassList:
    return ClassList.from_json(_classes_bytes(table_uri).decode(), source=storage.join(table_uri, CLASSES_FILE))


def _classes_bytes(table_uri: str) -> bytes:
    uri = storage.join(table_uri, CLASSES_FILE)
    try:
        return storage.read_bytes(uri)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{uri}: missing; every image table directory needs its classes.json") from e


def read_table(table_uri: str, columns: list[str] | None = None) -> pa.Table:
    """Read all shards of a table (each checked by :func:`read_shard`)."""
    return pa.concat_tables([read_shard(uri, columns) for uri in shard_uris(table_uri)])


def read_shard(uri: str, columns: list[str] | None = None) -> pa.Table:
    """One shard as the table schema's ``columns``, checked: readable Parquet, the required columns, each row's
    image bytes or path column, and column types that match the other shards'. Errors name the shard."""
    fs, path = storage.filesystem(uri)
    try:
        schema = pq.read_schema(path, filesystem=fs)
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise FileNotFoundError(f"{uri}: shard not found (listed, then gone; rerun)") from e
        raise TableError(
            f"{uri}: not a readable Parquet shard ({e}); it is empty, truncated or corrupt: rewrite it, or remove "
            "it from the table"
        ) from e
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if "image" not in schema.names and "path" not in schema.names:
        missing.append("image (or path)")
    if missing:
        raise TableError(f"{uri}: Parquet file is missing column(s) {', '.join(missing)}")
    wanted = [c for c in (columns or SCHEMA.names) if c in schema.names]
    try:
        table = pq.read_table(path, filesystem=fs, columns=wanted)
    except (pa.ArrowException, OSError) as e:
        raise TableError(f"{uri}: cannot read the shard's data ({e}); it is truncated or corrupt: rewrite it") from e
    for name in SCHEMA.names:
        if name in (columns or SCHEMA.names) and name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), SCHEMA.field(name).type))
    target = _subschema(columns)
    try:
        return table.select(target.names).cast(target)
    except (pa.ArrowException, ValueError, TypeError) as e:
        found = {f.name: str(f.type) for f in schema if f.name in target.names}
        expected = {f.name: str(f.type) for f in target}
        raise TableError(
            f"{uri}: column types {found} do not match the table schema {expected} ({e}); rewrite the shard with "
            "the others' schema"
        ) from e


def check_labels(rows: list[dict], classes: ClassList, where: str) -> None:
    """Every row's label indexes ``classes.json`` and its ``classname`` is that entry; the first mismatch named."""
    for row in rows:
        label = row["label"]
        if label is None or not 0 <= label < len(classes.names):
            raise TableError(
                f"{where}: row id={row['id']!r} has label {label}, but classes.json lists {len(classes.names)} "
                f"class(es) (labels 0..{len(classes.names) - 1}); fix the label or classes.json"
            )
        if row.get("classname") is not None and row["classname"] != classes.names[label]:
            raise TableError(
                f"{where}: row id={row['id']!r} has classname {row['classname']!r} but classes.json names label "
                f"{label} {classes.names[label]!r}; classes.json does not match the table's labels"
            )


def _subschema(columns: list[str] | None) -> pa.Schema:
    return pa.schema([SCHEMA.field(c) for c in (columns or SCHEMA.names)])


def image_bytes(row: dict, source: str = "") -> bytes:
    """The encoded bytes of a row's image (inline bytes, else read from ``path``)."""
    if row.get("image") is not None:
        return row["image"]
    if row.get("path"):
        try:
            return storage.read_bytes(row["path"])
        except (FileNotFoundError, OSError) as e:
            raise ImageDecodeError(f"{source}row id={row['id']!r}: cannot read image file {row['path']}: {e}") from e
    raise ImageDecodeError(f"{source}row id={row['id']!r}: neither 'image' bytes nor 'path' is set")


def decode_image(data: bytes, where: str) -> Image.Image:
    """Decode to RGB; ``where`` names the file or row for the error message."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageDecodeError(f"{where}: corrupt or unreadable image ({e})") from e


def snapshot(table_uri: str) -> dict:
    """What a table holds right now: its shards (name, size, and modification time locally or ETag on S3) and a
    digest over them and classes.json. Cheap (no image bytes read) and changes whenever a shard or the class list
    changes."""
    h = hashlib.sha256()
    files = []
    for uri in shard_uris(table_uri):
        entry = {"name": uri.rsplit("/", 1)[-1], **storage.stat(uri)}
        files.append(entry)
        h.update(json.dumps(entry, sort_keys=True).encode())
    h.update(_classes_bytes(table_uri))
    return {"uri": table_uri, "digest": h.hexdigest(), "files": files}


def sources_digest(snapshots: list[dict]) -> str:
    """One digest over several tables' snapshots (the pipeline's snapshot step computes the same)."""
    return hashlib.sha256("\n".join(s["digest"] for s in snapshots).encode()).hexdigest()
