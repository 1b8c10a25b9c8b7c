"""Every storage error names its object: shards that are corrupt, truncated, empty or of another schema, a missing
or mismatched classes.json. Nothing is written when the input is bad."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcite.data.table import TableError, read_table
from clipcite.steps import sample_splits
from tests.conftest import tiny_config


@pytest.fixture
def copy(table, tmp_path):
    out = tmp_path / "table"
    shutil.copytree(table, out)
    return out


def _sample(table, tmp_path):
    out = tmp_path / "splits"
    try:
        return sample_splits.run(str(table), str(out), tiny_config("splits.shots=2"))
    finally:
        assert not out.exists()  # nothing half-written


def _second_shard(copy, table: pa.Table):
    pq.write_table(table, copy / "part-00001.parquet")
    return copy / "part-00001.parquet"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_shard_is_named(copy, tmp_path, damage):
    good = (copy / "part-00000.parquet").read_bytes()
    shard = copy / "part-00001.parquet"
    broken = {"garbage": b"not parquet at all" * 10, "truncated": good[: len(good) // 2], "empty": b""}
    shard.write_bytes(broken[damage])
    with pytest.raises(TableError, match=f"{shard}: not a readable Parquet shard .*rewrite it, or remove it"):
        _sample(copy, tmp_path)


def test_a_shard_of_another_schema_is_named(copy, tmp_path):
    rows = read_table(str(copy), columns=["id", "label", "classname", "domain", "split"]).slice(0, 2).to_pylist()
    odd = pa.table({**{k: [r[k] for r in rows] for k in rows[0]}, "label": ["zero", "one"], "image": [b"", b""]})
    odd = odd.set_column(0, "id", pa.array([f"odd{i}" for i in range(2)]))
    shard = _second_shard(copy, odd)
    with pytest.raises(TableError, match=f"{shard}: column types .*'label': 'string'.*'label': 'int64'"):
        _sample(copy, tmp_path)


def test_missing_classes_json_is_named(copy, tmp_path):
    (copy / "classes.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"{copy / 'classes.json'}: missing"):
        _sample(copy, tmp_path)


def test_classes_json_that_does_not_match_the_labels_is_named(copy, tmp_path):
    body = json.loads((copy / "classes.json").read_text())
    (copy / "classes.json").write_text(json.dumps({**body, "classnames": body["classnames"][:4]}))
    with pytest.raises(TableError, match=r"row id='.*' has label [45], but classes.json lists 4 class\(es\)"):
        _sample(copy, tmp_path)
    swapped = [body["classnames"][1], body["classnames"][0], *body["classnames"][2:]]
    (copy / "classes.json").write_text(json.dumps({**body, "classnames": swapped}))
    with pytest.raises(TableError, match="classes.json does not match the table's labels"):
        _sample(copy, tmp_path)
    (copy / "classes.json").write_text("{not json")
    with pytest.raises(TableError, match=f"{copy / 'classes.json'}: not valid JSON"):
        _sample(copy, tmp_path)
