"""Image tables and steps on s3:// URIs, against a real S3 endpoint (moto_server on loopback)."""

import json

import boto3
import pytest

from clipcite import storage
from clipcite.data.table import read_classes, read_table
from clipcite.steps import sample_splits

from .conftest import tiny_config
from .servers import moto_server, s3_environment


@pytest.fixture(scope="module")
def s3(monkeypatch_module):
    with moto_server() as endpoint:
        for key, value in s3_environment(endpoint).items():
            monkeypatch_module.setenv(key, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="clipcite-test")
        yield endpoint


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_table_round_trip_and_splits_on_s3(s3, table):
    # Copy a local table to S3, then run sample-splits S3 -> S3.
    for name in ("part-00000.parquet", "classes.json"):
        storage.write_bytes(f"s3://clipcite-test/table/{name}", (table / name).read_bytes())
    assert len(read_table("s3://clipcite-test/table")) == len(read_table(str(table)))
    assert read_classes("s3://clipcite-test/table").names == read_classes(str(table)).names
    config = tiny_config("splits.shots=4")
    manifest = sample_splits.run("s3://clipcite-test/table", "s3://clipcite-test/splits", config)
    assert manifest["sets"]["train"]["rows"] == 3 * 4  # 3 base classes x 4 shots
    stored = json.loads(storage.read_text("s3://clipcite-test/splits/manifest.json"))
    assert stored["sets"] == manifest["sets"]
    assert len(read_table("s3://clipcite-test/splits/train")) == manifest["sets"]["train"]["rows"]
    with storage.local_dir("s3://clipcite-test/splits") as local:
        assert (local / "config.yaml").is_file() and (local / "eval").is_dir()


def test_missing_object_and_bucket_are_named(s3):
    with pytest.raises(FileNotFoundError, match="s3://clipcite-test/nope/classes.json"):
        read_classes("s3://clipcite-test/nope")
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket/t"):
        read_table("s3://no-such-bucket/t")


def test_rewriting_a_table_on_s3_leaves_no_stale_shard(s3):
    from clipcite.data.table import ClassList, write_table

    rows = [
        {"id": str(i), "image": b"x" * 100, "label": 0, "classname": "a", "domain": "d", "split": "train"}
        for i in range(6)
    ]
    write_table(rows, "s3://clipcite-test/rewrite", ClassList(("a",)), shard_bytes=200)
    assert len(storage.list_files("s3://clipcite-test/rewrite", ".parquet")) == 3
    write_table(rows[:2], "s3://clipcite-test/rewrite", ClassList(("a",)), shard_bytes=10_000)
    assert len(storage.list_files("s3://clipcite-test/rewrite", ".parquet")) == 1
    assert [r["id"] for r in read_table("s3://clipcite-test/rewrite").to_pylist()] == ["0", "1"]
