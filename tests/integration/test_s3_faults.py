"""The chain's S3 paths through a flaky S3 (``tests/support/faultproxy.py`` in front of ``moto_server``): the same
outputs as a clean run, and an upload cut mid-way never leaves an object (nor a split) that a later step reads as
complete."""

import logging

import boto3
import pytest

from clipcite import storage
from clipcite.steps import finetune, sample_splits
from tests.conftest import tiny_config
from tests.support.faultproxy import FaultProxy
from tests.support.s3_chain import bucket_contents, run_chain
from tests.support.servers import s3_store

pytestmark = pytest.mark.slow  # see pyproject.toml: `make test-fast` leaves these out

log = logging.getLogger(__name__)
FRACTION, SEED = 0.15, 14  # 15% of S3 requests get a reset, a 500, a 503, a slow answer or a truncated body
CLEAN, FAULTY = "clipcite-clean", "clipcite-faulty"
CONFIG = tiny_config("splits.shots=2", "train.epochs=1", "train.batch_size=4")


@pytest.fixture(scope="module")
def s3(table):
    with pytest.MonkeyPatch.context() as mp, s3_store(mp, CLEAN, FAULTY) as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint)
        for bucket in (CLEAN, FAULTY):
            for name in ("part-00000.parquet", "classes.json"):
                client.put_object(Bucket=bucket, Key=f"table/{name}", Body=(table / name).read_bytes())
        yield endpoint


def test_the_chain_through_s3_faults_writes_what_a_clean_run_writes(s3, monkeypatch, capsys):
    run_chain(CLEAN, CONFIG)
    with FaultProxy(s3, fraction=FRACTION, seed=SEED) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        run_chain(FAULTY, CONFIG)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    clean, faulty = bucket_contents(s3, CLEAN), bucket_contents(s3, FAULTY)
    assert sorted(faulty) == sorted(clean)
    assert {"model/open_clip_model.safetensors", "teacher/teacher.safetensors", "report/metrics.json"} <= set(clean)
    different = [key for key in clean if clean[key] != faulty[key]]
    assert not different, different
    summary = proxy.summary()
    with capsys.disabled():
        print(f"\nS3 faults: {summary}")
    # Each fault kind was injected, and every injected fault was followed by the client's retry of the same request
    # (method, path, Range).
    assert {"reset", "500", "503", "slow", "truncate"} <= set(summary["faults"]), summary
    assert proxy.injected >= 10 and summary["retried"] == proxy.injected and not summary["not_retried"], summary


def _cut(method: str, part: str = ""):
    """A rule that cuts every ``method`` request whose path contains ``part`` mid-body; the rest pass untouched."""
    return lambda m, path: "cut_upload" if m == method and part in path else "none"


def test_an_upload_cut_midway_leaves_the_previous_object_and_no_new_one(s3, monkeypatch):
    monkeypatch.setenv("CLIPCITE_S3_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("CLIPCITE_S3_MULTIPART_MB", "5")
    old, new = b"old" * 1000, bytes(range(256)) * (11 * 4096)  # 11 MiB: three parts of 5 MiB
    storage.write_bytes(f"s3://{FAULTY}/cut/blob.bin", old)
    for rule, size in ((_cut("PUT", "partNumber=2"), len(new)), (_cut("PUT"), 1000)):
        with FaultProxy(s3, rule=rule) as proxy:
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
            for uri in (f"s3://{FAULTY}/cut/blob.bin", f"s3://{FAULTY}/cut/fresh.bin"):
                with pytest.raises(OSError, match=uri):
                    storage.write_bytes(uri, new[:size])
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
        assert proxy.counts["cut_upload"] >= 2 * 3, proxy.summary()  # every attempt of both writes was cut
        assert storage.read_bytes(f"s3://{FAULTY}/cut/blob.bin") == old
        assert not storage.exists(f"s3://{FAULTY}/cut/fresh.bin")
        with pytest.raises(FileNotFoundError, match="fresh.bin: no such object"):
            storage.read_bytes(f"s3://{FAULTY}/cut/fresh.bin")
    # The failed multipart uploads were aborted: no parts left behind on the store.
    assert not boto3.client("s3", endpoint_url=s3).list_multipart_uploads(Bucket=FAULTY).get("Uploads")


def test_a_step_whose_output_upload_is_cut_leaves_nothing_a_later_step_reads_as_complete(s3, monkeypatch):
    """sample-splits publishes its folder object by object; cut at the train shard, the step fails, and finetune
    pointed at that folder fails too, naming what is missing, rather than training on part of a split."""
    monkeypatch.setenv("CLIPCITE_S3_MAX_ATTEMPTS", "2")
    config = tiny_config("splits.shots=2", "train.epochs=1", "train.batch_size=4")
    root = f"s3://{FAULTY}/cutstep"
    with FaultProxy(s3, rule=_cut("PUT", "train/part-")) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(OSError, match="train/part-00000.parquet"):
            sample_splits.run(f"s3://{FAULTY}/table", f"{root}/splits", config)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    assert proxy.counts["cut_upload"] >= 2, [s for s in proxy.seen if s[2] != "none"]
    published = {p for p, _ in storage.walk(f"{root}/splits")}
    log.info("published before the cut: %s", sorted(published))
    assert "train/part-00000.parquet" not in published
    with pytest.raises((FileNotFoundError, ValueError), match=f"{root}/splits"):
        finetune.run(f"{root}/splits", f"{root}/model", config)
    assert not storage.exists(f"{root}/model")
