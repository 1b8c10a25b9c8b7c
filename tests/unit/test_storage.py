"""Image tables and steps on s3:// URIs, against a real S3 endpoint (moto_server on loopback)."""

import boto3
import pytest

from clipcite import storage
from clipcite.data.table import read_classes, read_table
from clipcite.records import EvalReport, SplitsManifest
from clipcite.steps import sample_splits
from clipcite.steps.artifact_io import read_config
from tests.conftest import tiny_config
from tests.support.servers import moto_server, s3_environment, s3_store


@pytest.fixture(scope="module")
def s3(monkeypatch_module):
    with s3_store(monkeypatch_module, "clipcite-test") as endpoint:
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
    config_uri = "s3://clipcite-test/run_config.yaml"
    manifest = sample_splits.run("s3://clipcite-test/table", "s3://clipcite-test/splits", config, config_uri=config_uri)
    assert read_config(config_uri) == config  # the config artifact the later steps read
    assert manifest.sets["train"].rows == 3 * 4  # 3 base classes x 4 shots
    stored = SplitsManifest.read("s3://clipcite-test/splits")  # manifest.json
    assert stored.sets == manifest.sets
    assert len(read_table("s3://clipcite-test/splits/train")) == manifest.sets["train"].rows
    with storage.local_dir("s3://clipcite-test/splits") as local:
        assert (local / "eval").is_dir() and not (local / "config.yaml").exists()


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


def test_teacher_cache_model_and_report_on_s3(s3, table):
    from clipcite.steps import cache_teacher, evaluate, finetune

    for name in ("part-00000.parquet", "classes.json"):
        storage.write_bytes(f"s3://clipcite-test/chain/table/{name}", (table / name).read_bytes())
    config = tiny_config("splits.shots=2", "train.epochs=1", "train.batch_size=4")
    root = "s3://clipcite-test/chain"
    sample_splits.run(f"{root}/table", f"{root}/splits", config)
    cache_teacher.run(f"{root}/splits", f"{root}/teacher", config)
    summary = finetune.run(f"{root}/splits", f"{root}/model", config, cache_uri=f"{root}/teacher")
    assert summary.teacher == "cache"
    body = evaluate.run(f"{root}/model", f"{root}/splits", f"{root}/report", config)
    assert storage.exists(f"{root}/model/open_clip_model.safetensors")
    assert EvalReport.read(f"{root}/report").mean == body.mean  # metrics.json


def test_large_objects_move_in_parts(s3, monkeypatch):
    monkeypatch.setenv("CLIPCITE_S3_MULTIPART_MB", "5")  # S3's smallest part size
    data = bytes(range(256)) * (11 * 4096)  # 11 MiB -> 3 parts
    storage.write_bytes("s3://clipcite-test/big/blob.bin", data)
    head = boto3.client("s3", endpoint_url=s3).head_object(Bucket="clipcite-test", Key="big/blob.bin")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload's ETag counts its parts
    assert storage.read_bytes("s3://clipcite-test/big/blob.bin") == data
    with storage.local_dir("s3://clipcite-test/big") as local:
        assert (local / "blob.bin").read_bytes() == data


def test_missing_bucket_is_named(s3):
    with pytest.raises(FileNotFoundError, match="bucket 'no-such-bucket' does not exist at http://127.0.0.1"):
        storage.read_bytes("s3://no-such-bucket/a/b.json")
    with pytest.raises(FileNotFoundError, match="bucket 'no-such-bucket' does not exist"):
        storage.check_bucket("s3://no-such-bucket/data")


def test_missing_credentials_are_named(s3, monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(PermissionError, match="no S3 credentials found; set AWS_ACCESS_KEY_ID"):
        storage.read_bytes("s3://clipcite-test/table/classes.json")


def test_wrong_credentials_are_named(monkeypatch):
    with moto_server(require_auth=True) as endpoint:  # checks keys: ours are unknown to it
        for key, value in s3_environment(endpoint).items():
            monkeypatch.setenv(key, value)
        with pytest.raises(PermissionError, match=r"refused the request \((403|InvalidAccessKeyId)\): the S3 cred"):
            storage.read_bytes("s3://clipcite-test/table/classes.json")
        with pytest.raises(PermissionError, match="credentials are wrong"):
            storage.check_bucket("s3://clipcite-test/table")
