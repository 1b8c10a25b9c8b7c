"""The Parquet image table: one row per image, a directory of shards plus ``classes.json``.

Columns (docs/data.md, "Image table"): ``id`` (stable string), ``image`` (original encoded bytes) or ``path``
(a file the image can be read from), ``label`` (int), ``classname``, ``domain``, ``split``. The directory holds
``part-00000.parquet``, ``part-00001.parquet``... and ``classes.json`` (class names in label order, the prompt
template, the dataset name).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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
# The unit of streaming: readers hold one row group (plus a bounded LRU of them, clipcite.data.rows) at a time.
# 256 rows of ImageNet-sized JPEGs (~110 KB) is ~28 MB; the byte cap bounds a group of unusually large images.
ROW_GROUP_ROWS = 256
ROW_GROUP_BYTES = 32 * 1024 * 1024


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


def write_table(
    rows: Iterable[dict],
    out_uri: str,
    classes: ClassList,
    shard_bytes: int = SHARD_BYTES,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> dict[str, int]:
    """Write rows as a sharded table directory at ``out_uri`` (staged: all or nothing). Returns counts.

    Streams: at most one row group (``row_group_rows`` rows or :data:`ROW_GROUP_BYTES`) is held before it is
    written, so a table of any size is written in bounded memory."""
    counts = {"rows": 0, "shards": 0}
    with storage.staged_dir(out_uri) as tmp:
        writer = _ShardWriter(tmp, counts, shard_bytes, row_group_rows)
        try:
            for row in rows:
                writer.add({name: row.get(name) for name in SCHEMA.names})
            writer.finish()
        finally:
            writer.close()
        (tmp / CLASSES_FILE).write_text(classes.to_json())
    return counts


class _ShardWriter:
    """Rows to ``part-NNNNN.parquet`` files: a row group per ``row_group_rows`` rows (or ROW_GROUP_BYTES), a new
    shard once a shard holds ``shard_bytes``."""

    def __init__(self, directory: Path, counts: dict[str, int], shard_bytes: int, row_group_rows: int):
        self.directory, self.counts = directory, counts
        self.shard_bytes, self.row_group_rows = shard_bytes, max(1, row_group_rows)
        self.writer: pq.ParquetWriter | None = None
        self.group: list[dict] = []
        self.group_size = self.shard_size = 0

    def add(self, row: dict) -> None:
        size = len(row["image"] or b"") + 64
        self.group.append(row)
        self.group_size += size
        self.shard_size += size
        if self.shard_size >= self.shard_bytes:
            self._flush()
            self.close()
        elif len(self.group) >= self.row_group_rows or self.group_size >= ROW_GROUP_BYTES:
            self._flush()

    def finish(self) -> None:
        if self.group or (self.writer is None and self.counts["shards"] == 0):
            self._flush(force=True)

    def _flush(self, force: bool = False) -> None:
        if not self.group and not force:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.directory / f"part-{self.counts['shards']:05d}.parquet", SCHEMA)
            self.counts["shards"] += 1
        self.writer.write_table(pa.Table.from_pylist(self.group, schema=SCHEMA), row_group_size=len(self.group) or 1)
        self.counts["rows"] += len(self.group)
        self.group, self.group_size = [], 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer, self.shard_size = None, 0


def shard_uris(table_uri: str) -> list[str]:
    """The table's Parquet shards; a local folder that is not there is reported as missing (the highest missing
    one: a mistyped ``--splits`` folder, not "no shards" in a split below it)."""
    if not storage.is_s3(table_uri) and not Path(table_uri).exists():
        missing = Path(table_uri)
        while not missing.parent.exists() and missing.parent != missing:
            missing = missing.parent
        below = f" (looking for the table {table_uri})" if missing != Path(table_uri) else ""
        raise FileNotFoundError(f"{missing}: no such folder{below}")
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
    """All shards of a table in memory (each checked as in :func:`shard_row_groups`): for tests and metadata
    columns; steps stream with :func:`iter_row_groups`."""
    return pa.concat_tables([read_shard(uri, columns) for uri in shard_uris(table_uri)])


def read_shard(uri: str, columns: list[str] | None = None) -> pa.Table:
    """One shard as the table schema's ``columns``, checked (see :func:`shard_row_groups`)."""
    groups = [group for _, _, group in shard_row_groups(uri, columns)]
    return pa.concat_tables(groups) if groups else _subschema(columns).empty_table()


def iter_row_groups(table_uri: str, columns: list[str] | None = None) -> Iterator[tuple[str, int, pa.Table]]:
    """``(shard uri, row group index, rows)`` for every row group of every shard, in table order: one row group in
    memory at a time (:data:`ROW_GROUP_ROWS` rows in tables written here)."""
    for uri in shard_uris(table_uri):
        yield from shard_row_groups(uri, columns)


def shard_row_groups(uri: str, columns: list[str] | None = None) -> Iterator[tuple[str, int, pa.Table]]:
    """One shard's row groups as the table schema's ``columns``, checked: readable Parquet, the required columns,
    each row's image bytes or path column, and column types that match the other shards'. Errors name the shard."""
    with open_shard(uri) as (parquet, schema):
        wanted = [c for c in (columns or SCHEMA.names) if c in schema.names]
        for index in range(parquet.num_row_groups):
            yield uri, index, _conform(read_group(parquet, uri, index, wanted), uri, schema, columns)


def read_group(parquet: pq.ParquetFile, uri: str, index: int, columns: list[str]) -> pa.Table:
    """One row group's ``columns``; a shard that cannot be read is an error naming it and the group."""
    try:
        return parquet.read_row_group(index, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise TableError(
            f"{uri}: cannot read the shard's data (row group {index}: {e}); it is truncated or corrupt: rewrite it"
        ) from e


@contextlib.contextmanager
def open_shard(uri: str) -> Iterator[tuple[pq.ParquetFile, pa.Schema]]:
    """The shard's ParquetFile (footer read, no data) and its schema, with the required columns checked."""
    fs, path = storage.filesystem(uri)
    try:
        handle = fs.open_input_file(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{uri}: shard not found (listed, then gone; rerun)") from e
    with handle:
        try:
            parquet = pq.ParquetFile(handle)
        except (pa.ArrowException, OSError) as e:
            raise TableError(
                f"{uri}: not a readable Parquet shard ({e}); it is empty, truncated or corrupt: rewrite it, or remove "
                "it from the table"
            ) from e
        schema = parquet.schema_arrow
        missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
        if "image" not in schema.names and "path" not in schema.names:
            missing.append("image (or path)")
        if missing:
            raise TableError(f"{uri}: Parquet file is missing column(s) {', '.join(missing)}")
        yield parquet, schema


def _conform(table: pa.Table, uri: str, schema: pa.Schema, columns: list[str] | None) -> pa.Table:
    """``table`` with the schema's ``columns`` (absent ones as nulls) and types, or a TableError naming the shard."""
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


def rows_with_ids(table_uri: str, ids: list[str]) -> Iterator[dict]:
    """The rows (images included) whose id is in ``ids``, in table order, one row group at a time; a row group is
    read whole only when its ``id`` column holds a wanted id."""
    wanted = pa.array(ids, pa.string())
    for uri in shard_uris(table_uri):
        with open_shard(uri) as (parquet, schema):
            for index in range(parquet.num_row_groups):
                found = pc.is_in(read_group(parquet, uri, index, ["id"])["id"], value_set=wanted)
                if not pc.any(found).as_py():
                    continue
                group = read_group(parquet, uri, index, [c for c in SCHEMA.names if c in schema.names])
                yield from _conform(group, uri, schema, None).filter(found).to_pylist()


def check_labels(rows: pa.Table, classes: ClassList, where: str) -> None:
    """Every row's label indexes ``classes.json`` and its ``classname`` is that entry; the first mismatch named.
    ``rows`` holds the ``id``, ``label`` and (optionally) ``classname`` columns; checked column-wise."""
    labels = rows["label"]
    count = len(classes.names)
    bad = pc.fill_null(pc.or_(pc.less(labels, 0), pc.greater_equal(labels, count)), True)
    if pc.any(bad).as_py():
        i = pc.index(bad, True).as_py()
        raise TableError(
            f"{where}: row id={rows['id'][i].as_py()!r} has label {labels[i].as_py()}, but classes.json lists {count} "
            f"class(es) (labels 0..{count - 1}); fix the label or classes.json"
        )
    if "classname" not in rows.column_names or not count:
        return
    expected = pa.array(classes.names, pa.string()).take(labels)
    wrong = pc.fill_null(pc.not_equal(rows["classname"], expected), False)
    if pc.any(wrong).as_py():
        i = pc.index(wrong, True).as_py()
        label = labels[i].as_py()
        raise TableError(
            f"{where}: row id={rows['id'][i].as_py()!r} has classname {rows['classname'][i].as_py()!r} but "
            f"classes.json names label {label} {classes.names[label]!r}; classes.json does not match the table's "
            "labels"
        )


def _subschema(columns: list[str] | None) -> pa.Schema:
    return pa.schema([SCHEMA.field(c) for c in (columns or SCHEMA.names)])


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
