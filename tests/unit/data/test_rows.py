"""Bounded memory: tables are written and read one row group at a time, a split travels as
metadata with its images fetched per batch through a bounded LRU, and the results equal the whole-table path's."""

from __future__ import annotations

import gc
import json
import os

import pyarrow.parquet as pq
import pytest
import torch

from clipcite.data import rows as rows_module
from clipcite.data import table as table_module
from clipcite.data.images import ImageDecodeError
from clipcite.data.prompts import prompts_for
from clipcite.data.rows import ImageRows, image_bytes
from clipcite.data.splits import relabel, sample_few_shot
from clipcite.data.table import ClassList, read_classes, read_table, write_table
from clipcite.evaluation.predict import predict
from clipcite.steps.sample_splits import run as sample_splits
from clipcite.training.teacher_cache import build_cache
from tests.conftest import tiny_config

GROUP = 5  # rows per row group in these tests' tables (the default is table.ROW_GROUP_ROWS)


@pytest.fixture(scope="module")
def grouped(table, tmp_path_factory):
    """The shared test table rewritten with 5-row groups (many groups, so streaming is visible)."""
    out = tmp_path_factory.mktemp("grouped") / "table"
    rows = read_table(str(table)).to_pylist()
    write_table(rows, str(out), read_classes(str(table)), row_group_rows=GROUP)
    return out


class ReadLog:
    """Every row-group read: (rows, columns). Patched into pyarrow so any reader that bypasses it is caught too."""

    def __init__(self, monkeypatch):
        self.reads: list[tuple[int, tuple[str, ...]]] = []
        original = pq.ParquetFile.read_row_group

        def read_row_group(parquet, index, columns=None, **kwargs):
            result = original(parquet, index, columns=columns, **kwargs)
            self.reads.append((result.num_rows, tuple(result.column_names)))
            return result

        monkeypatch.setattr(pq.ParquetFile, "read_row_group", read_row_group)
        monkeypatch.setattr(pq, "read_table", self._refuse)

    @staticmethod
    def _refuse(*args, **kwargs):
        raise AssertionError("a whole-file read (pq.read_table) where row groups should stream")

    def image_reads(self) -> list[int]:
        return [n for n, columns in self.reads if "image" in columns]


def test_writer_row_groups_by_rows_and_by_bytes(tmp_path, monkeypatch):
    rows = [
        {"id": str(i), "image": bytes(100), "label": 0, "classname": "a", "domain": "d", "split": "x"}
        for i in range(12)
    ]
    write_table(rows, str(tmp_path / "t"), ClassList(("a",)), row_group_rows=5)
    meta = pq.ParquetFile(tmp_path / "t" / "part-00000.parquet").metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [5, 5, 2]
    monkeypatch.setattr(table_module, "ROW_GROUP_BYTES", 3 * 164)  # 3 rows of 100 image bytes + 64 per row
    write_table(rows, str(tmp_path / "u"), ClassList(("a",)), row_group_rows=100)
    meta = pq.ParquetFile(tmp_path / "u" / "part-00000.parquet").metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [3, 3, 3, 3]
    assert table_module.ROW_GROUP_ROWS == 256  # the documented default


def test_writer_holds_one_row_group_of_a_generated_stream(tmp_path):
    pending = []

    def generated():
        for i in range(23):
            pending.append(i)
            yield {"id": str(i), "image": bytes(10), "label": 0, "classname": "a", "domain": "d", "split": "x"}

    original = pq.ParquetWriter.write_table
    held = []

    def write(writer, table, *args, **kwargs):
        held.append(len(pending))
        pending.clear()
        return original(writer, table, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pq.ParquetWriter, "write_table", write)
        write_table(generated(), str(tmp_path / "t"), ClassList(("a",)), row_group_rows=4)
    assert max(held) <= 4 and sum(held) == 23  # rows go to disk every 4; the stream is never collected


def test_image_rows_are_the_tables_rows_without_their_bytes(grouped, monkeypatch):
    whole = read_table(str(grouped)).to_pylist()
    rows = ImageRows.scan(str(grouped))
    assert len(rows) == len(whole) and rows.ids == [r["id"] for r in whole]
    assert [(r["label"], r["classname"], r["image"]) for r in rows] == [
        (w["label"], w["classname"], None) for w in whole
    ]
    rows_module._row_groups().cache_clear()
    log = ReadLog(monkeypatch)
    held = []
    for row, expected in zip(rows, whole, strict=True):
        assert image_bytes(row) == expected["image"]
        held.append(rows_module._row_groups().cache_info().currsize)
    groups = -(-len(whole) // GROUP)
    assert len(log.image_reads()) == groups  # in table order every row group is read once...
    assert max(log.image_reads()) <= GROUP and max(held) <= rows_module.row_group_cache_size()  # ...and few are held


def test_the_row_group_cache_takes_its_size_when_first_used(monkeypatch):
    monkeypatch.setenv("CLIPCITE_ROW_GROUP_CACHE", "5")  # set after clipcite.data.rows was imported
    rows_module._row_groups.cache_clear()
    try:
        assert rows_module._row_groups().cache_info().maxsize == 5
    finally:
        rows_module._row_groups.cache_clear()  # the next reader sizes it from its own setting


def test_local_copy_serves_shuffled_reads_and_is_removed(grouped, monkeypatch):
    whole = read_table(str(grouped)).to_pylist()
    local = ImageRows.scan(str(grouped)).local()
    path = local[0]["blob"]
    log = ReadLog(monkeypatch)
    for i in torch.randperm(len(whole), generator=torch.Generator().manual_seed(0)).tolist():
        assert image_bytes(local[i]) == whole[i]["image"]
    assert log.reads == []  # no Parquet read after the copy
    assert os.path.getsize(path) == sum(len(r["image"]) for r in whole)
    del local
    gc.collect()
    assert not os.path.exists(path)


def test_a_changed_shard_is_named_not_misread(grouped, tmp_path):
    copy = tmp_path / "t"
    write_table(read_table(str(grouped)).to_pylist(), str(copy), read_classes(str(grouped)), row_group_rows=GROUP)
    rows = ImageRows.scan(str(copy))
    row = dict(rows[3], version="the shard as scanned")
    shuffled = read_table(str(copy)).to_pylist()[::-1]
    write_table(shuffled, str(copy), read_classes(str(copy)), row_group_rows=GROUP)
    with pytest.raises(table_module.TableError, match=r"part-00000.parquet: row group 0 no longer holds row id="):
        image_bytes(row)


def test_sample_splits_streams_and_writes_the_whole_table_paths_splits(grouped, tmp_path, monkeypatch):
    whole = read_table(str(grouped)).to_pylist()
    log = ReadLog(monkeypatch)
    manifest = sample_splits(str(grouped), str(tmp_path / "s"), tiny_config("splits.shots=2"))
    assert log.image_reads() and max(log.image_reads()) <= GROUP  # images only ever a row group at a time
    monkeypatch.undo()
    # the whole-table rule, written out: K per class by rank among the train split's base classes, table order
    keep = sorted({r["label"] for r in whole if r["split"] == "train"})[:3]
    pool = [r for r in whole if r["split"] == "train" and r["label"] in keep]
    picked = {pool[i]["id"] for i in sample_few_shot([r["id"] for r in pool], [r["label"] for r in pool], 2, 1)}
    expected = [{**r, "label": relabel([r["label"]], keep)[0]} for r in whole if r["id"] in picked]
    assert read_table(str(tmp_path / "s" / "train")).to_pylist() == expected
    assert manifest.sets["train"].rows == len(expected)
    tests = [r for r in whole if r["split"] == "test" and r["domain"] == "sketch" and r["label"] in keep]
    sketch = read_table(str(tmp_path / "s" / "eval" / "sketch-base")).to_pylist()
    assert [r["id"] for r in sketch] == [r["id"] for r in tests]
    assert [r["image"] for r in sketch] == [r["image"] for r in tests]


@pytest.fixture(scope="module")
def split(grouped, tmp_path_factory):
    out = tmp_path_factory.mktemp("split") / "s"
    sample_splits(str(grouped), str(out), tiny_config("splits.shots=4"))
    json.loads((out / "manifest.json").read_text())
    return out


def test_evaluate_and_the_teacher_cache_equal_the_whole_table_path(split, tiny, monkeypatch):
    """Same predictions and the same teacher crops/features from metadata rows as from rows holding their bytes."""
    eval_uri = str(split / "eval" / "photo-base")
    names = read_classes(eval_uri).names
    prompts = prompts_for("a photo of a {}.", names)
    whole = read_table(eval_uri).to_pylist()
    expected = predict(tiny, whole, prompts, batch_size=4)
    log = ReadLog(monkeypatch)
    streamed = predict(tiny, ImageRows.scan(eval_uri), prompts, batch_size=4)
    assert all(torch.equal(a, b) for a, b in zip(expected, streamed, strict=True))
    assert max(log.image_reads()) <= 256  # the table was written with the default row groups
    monkeypatch.undo()
    train_uri = str(split / "train")
    train = read_table(train_uri).to_pylist()
    train_prompts = prompts_for("a photo of a {}.", read_classes(train_uri).names)
    settings = {"seed": 1, "epochs": 2, "crop_scale": (0.5, 1.0), "crop_ratio": (0.75, 1.33), "batch_size": 4}
    a = build_cache(tiny, train, train_prompts, **settings)
    b = build_cache(tiny, ImageRows.scan(train_uri), train_prompts, **settings)
    c = build_cache(tiny, ImageRows.scan(train_uri).local(), train_prompts, **settings)
    for other in (b, c):
        assert torch.equal(a.boxes, other.boxes) and torch.equal(a.image, other.image) and a.meta == other.meta


def test_a_row_without_image_or_path_is_named_when_fetched(tmp_path):
    rows = [
        {"id": "ok", "image": b"bytes", "label": 0, "classname": "a", "domain": "d", "split": "x"},
        {"id": "empty", "image": None, "path": None, "label": 0, "classname": "a", "domain": "d", "split": "x"},
    ]
    write_table(rows, str(tmp_path / "t"), ClassList(("a",)))
    refs = ImageRows.scan(str(tmp_path / "t"))
    assert image_bytes(refs[0]) == b"bytes"
    with pytest.raises(ImageDecodeError, match=r"t: row id='empty': neither 'image' bytes nor 'path' is set"):
        image_bytes(refs[1], f"{tmp_path / 't'}: ")
    (tmp_path / "spill").mkdir()
    with pytest.raises(ImageDecodeError, match=r"row id='empty': neither"):
        refs.local(directory=str(tmp_path / "spill"))
    assert list((tmp_path / "spill").iterdir()) == []  # the half-made copy is gone
