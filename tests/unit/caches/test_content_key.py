"""The one keying rule of the content-keyed stores (clipcite/caches/content_key.py): the key is sha256 of a JSON list
of the base identity, the source digest, the split's id digest and row count, and the extra parts; any of them
changes it, and splits without the digests are refused with the store named."""

import hashlib
import json
from dataclasses import replace

import pytest

from clipcite.caches.content_key import content_key
from clipcite.records import SetDigest

RECORD = SetDigest(rows=12, ids_sha256="ids-abc")


def test_the_key_is_sha256_of_the_identity_digests_rows_and_parts_in_order():
    expected = hashlib.sha256(json.dumps(["sha256:model", "src-1", "ids-abc", 12, "photo", 3]).encode()).hexdigest()
    assert content_key("sha256:model", "src-1", RECORD, "photo", 3, what="teacher cache") == expected
    assert len(expected) == 64


def test_every_input_changes_the_key_and_what_the_key_ignores_does_not():
    key = content_key("sha256:model", "src-1", RECORD, "photo", what="x")
    changed = [
        content_key("sha256:other", "src-1", RECORD, "photo", what="x"),
        content_key("sha256:model", "src-2", RECORD, "photo", what="x"),
        content_key("sha256:model", "src-1", replace(RECORD, ids_sha256="ids-def"), "photo", what="x"),
        content_key("sha256:model", "src-1", replace(RECORD, rows=13), "photo", what="x"),
        content_key("sha256:model", "src-1", RECORD, "sketch", what="x"),
        content_key("sha256:model", "src-1", RECORD, "photo", "more", what="x"),
    ]
    assert len({key, *changed}) == 7
    # the split's other manifest data (its path, its set name) is not in the record; ``what`` only names the store
    assert content_key("sha256:model", "src-1", SetDigest(rows=12, ids_sha256="ids-abc"), "photo", what="y") == key
    # parts are hashed as JSON with sorted keys: a dict's order does not matter
    a = content_key("i", "s", RECORD, {"b": 1, "a": 2}, what="x")
    assert a == content_key("i", "s", RECORD, {"a": 2, "b": 1}, what="x")


@pytest.mark.parametrize(
    ("identity", "digest", "record"),
    [
        ("", "src", RECORD),
        ("sha256:m", "", RECORD),
        ("sha256:m", "src", SetDigest(rows=12, ids_sha256="")),
        ("sha256:m", "src", None),
    ],
)
def test_splits_without_an_identity_or_digest_are_refused_naming_the_store(identity, digest, record):
    with pytest.raises(ValueError, match="^zero-shot baseline: no base identity, source digest or id digest to key"):
        content_key(identity, digest, record, what="zero-shot baseline")
