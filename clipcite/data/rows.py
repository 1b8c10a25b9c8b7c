"""A table's rows as metadata with images fetched on use: what the image-reading steps pass around.

A row holds ``id``, ``label``, ``classname``, ``path`` and where its image lives (shard, row group, offset), never the
image bytes, so a split of any size costs a few dozen bytes per row. :func:`image_bytes` fetches
an image when a Dataset needs it, through a per-process LRU of :func:`row_group_cache_size` row groups (setting:
``CLIPCITE_ROW_GROUP_CACHE``; each DataLoader worker has its own): readers that go in table order (evaluate, the
teacher cache, crop boxes) read every row group once and hold at most that many.

Shuffled access (training) would reread a whole row group for each image, so :meth:`ImageRows.local` first copies
the images, in one sequential pass, to a local file (on disk, outside the process's memory) and then reads each image
with one ``pread``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from clipcite import storage
from clipcite.data.images import ImageDecodeError
from clipcite.data.table import TableError, iter_row_groups, open_shard, read_group

log = logging.getLogger(__name__)

META_COLUMNS = ["id", "label", "classname", "path"]


class ImageRows(Sequence):
    """The rows of a table in table order, as dicts built on access: ``id``, ``label``, ``classname``, ``path``,
    ``image`` (None) and either ``shard``/``version``/``row_group``/``offset`` or ``blob``/``start``/``length``."""

    def __init__(self, meta: pa.Table, shards: list[tuple[str, str]], blob: str = ""):
        self._meta, self._shards, self._blob = meta, shards, blob
        self._names = meta.column_names

    @classmethod
    def scan(cls, table_uri: str) -> ImageRows:
        """The metadata columns of every row, read row group by row group (no image bytes are read)."""
        parts, shards, index = [], [], {}
        for uri, group, rows in iter_row_groups(table_uri, META_COLUMNS):
            if uri not in index:
                index[uri] = len(shards)
                shards.append((uri, json.dumps(storage.stat(uri), sort_keys=True, default=str)))
            n = rows.num_rows
            where = {
                "shard": np.full(n, index[uri], np.int32),
                "row_group": np.full(n, group, np.int32),
                "offset": np.arange(n, dtype=np.int32),
            }
            for name, values in where.items():
                rows = rows.append_column(name, pa.array(values))
            parts.append(rows)
        if not parts:
            empty = {name: pa.array([], pa.int32()) for name in ("shard", "row_group", "offset")}
            return cls(pa.table({**{c: pa.array([], pa.string()) for c in META_COLUMNS}, **empty}), [])
        return cls(pa.concat_tables(parts).combine_chunks(), shards)

    def __len__(self) -> int:
        return self._meta.num_rows

    def __getitem__(self, i):
        if not isinstance(i, int | np.integer):
            raise TypeError(f"ImageRows indices are integers, not {type(i).__name__}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} of {n}")
        return self._row({name: self._meta.column(name)[int(i) % n].as_py() for name in self._names})

    def __iter__(self) -> Iterator[dict]:
        for batch in self._meta.to_batches(max_chunksize=4096):
            yield from (self._row(r) for r in batch.to_pylist())

    def _row(self, row: dict) -> dict:
        row["image"] = None
        if self._blob:
            row["blob"] = self._blob
        else:
            row["shard"], row["version"] = self._shards[row["shard"]]
        return row

    @property
    def ids(self) -> list[str]:
        return self._meta.column("id").to_pylist()

    def local(self, directory: str | None = None, source: str = "") -> ImageRows:
        """The same rows with every image copied, in one pass in table order, to a local file for random access.
        The file (the split's image bytes; in ``directory``, default the temp dir) goes when the result is
        garbage collected."""
        if self._blob:
            return self
        folder = tempfile.mkdtemp(prefix="clipcite-images-", dir=directory)
        path = os.path.join(folder, "images.bin")
        starts, lengths = np.zeros(len(self), np.int64), np.zeros(len(self), np.int64)
        try:
            with open(path, "wb") as out:
                position = 0
                for i, row in enumerate(self):
                    data = image_bytes(row, source)
                    out.write(data)
                    starts[i], lengths[i] = position, len(data)
                    position += len(data)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        meta = self._meta.drop_columns(["shard", "row_group", "offset"])
        meta = meta.append_column("start", pa.array(starts)).append_column("length", pa.array(lengths))
        copy = ImageRows(meta, [], blob=path)
        weakref.finalize(copy, _remove, folder, os.getpid())
        log.info("copied %d image(s) (%.0f MB) to %s for random access", len(self), position / 2**20, path)
        return copy


def fetch_image(row: dict, source: str = "") -> bytes | None:
    """The bytes at an :class:`ImageRows` row's location (None when the table holds no image bytes there)."""
    if row.get("blob"):
        return _pread(row["blob"], row["start"], row["length"])
    ids, images = _row_groups()(row["shard"], row["version"], row["row_group"])
    offset = row["offset"]
    if offset >= len(ids) or ids[offset].as_py() != row["id"]:
        raise TableError(
            f"{source}{row['shard']}: row group {row['row_group']} no longer holds row id={row['id']!r} at offset "
            f"{offset}; the shard changed while this step ran: rerun it"
        )
    return None if images is None else images[offset].as_py()


def row_group_cache_size() -> int:
    """Row groups held per process: ``CLIPCITE_ROW_GROUP_CACHE``, default 2, at least 1."""
    return max(1, int(os.environ.get("CLIPCITE_ROW_GROUP_CACHE", "2")))


RowGroup = tuple[pa.Array, pa.Array | None]


@functools.cache
def _row_groups() -> Callable[[str, str, int], RowGroup]:
    """The process's LRU of row groups, sized when the first image is fetched rather than when this module is
    imported, so the setting can be changed after import (by a caller, a test) and still applies."""
    return functools.lru_cache(maxsize=row_group_cache_size())(_row_group)


def _row_group(shard: str, version: str, group: int) -> RowGroup:
    """The ids and image bytes of one row group (``version``, the shard's size and time or ETag, keys the cache so
    a rewritten shard is read again)."""
    with open_shard(shard) as (parquet, schema):
        columns = ["id", "image"] if "image" in schema.names else ["id"]
        table = read_group(parquet, shard, group, columns)
    ids = table.column("id").combine_chunks()
    images = table.column("image").combine_chunks() if "image" in columns else None
    return ids, images


def _pread(path: str, start: int, length: int) -> bytes:
    key = (os.getpid(), path)  # a forked DataLoader worker opens its own descriptor
    fd = _FDS.get(key)
    if fd is None:
        fd = _FDS[key] = os.open(path, os.O_RDONLY)
    return os.pread(fd, length, start)


_FDS: dict[tuple[int, str], int] = {}


def _remove(folder: str, owner: int) -> None:
    if os.getpid() != owner:  # a forked worker's copy of the rows died: the file is not its to remove
        return
    for key in [k for k in _FDS if k[1].startswith(folder)]:
        os.close(_FDS.pop(key))
    shutil.rmtree(folder, ignore_errors=True)


def image_bytes(row: dict, source: str = "") -> bytes:
    """The encoded bytes of a row's image: inline bytes, else those where a metadata row
    (:class:`ImageRows`) says the table holds them, else read from ``path``."""
    if row.get("image") is not None:
        return row["image"]
    if row.get("shard") or row.get("blob"):
        data = fetch_image(row, source)
        if data is not None:
            return data
    if row.get("path"):
        try:
            return storage.read_bytes(row["path"])
        except (FileNotFoundError, OSError) as e:
            raise ImageDecodeError(f"{source}row id={row['id']!r}: cannot read image file {row['path']}: {e}") from e
    raise ImageDecodeError(f"{source}row id={row['id']!r}: neither 'image' bytes nor 'path' is set")
