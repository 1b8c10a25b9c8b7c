"""A table or folder at the root of a bucket (``s3://bucket``) is listed, read and mirrored like one under a
prefix: no key loses its first character to a "/" that is not there."""

from __future__ import annotations

import pytest

from clipcite import storage
from tests.support.servers import s3_store


@pytest.fixture(scope="module")
def bucket():
    with pytest.MonkeyPatch.context() as mp, s3_store(mp, "root-test"):
        yield "s3://root-test"


def test_bucket_root_lists_reads_and_mirrors(bucket, tmp_path):
    storage.write_text(f"{bucket}/abc.json", "{}")
    storage.write_text(f"{bucket}/sub/x.txt", "x")
    assert storage.list_files(bucket) == [f"{bucket}/abc.json"]
    assert [rel for rel, _ in storage.walk(bucket)] == ["abc.json", "sub/x.txt"]
    with storage.local_dir(bucket) as local:
        assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == [
            "abc.json",
            "sub/x.txt",
        ]
    with storage.mirrored_dir(f"{bucket}/") as (local, save):
        assert (local / "abc.json").read_text() == "{}"
        (local / "new.txt").write_text("n")
        save(local / "new.txt")
    assert storage.read_text(f"{bucket}/new.txt") == "n"
