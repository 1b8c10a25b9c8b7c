"""One rule for the content-keyed stores (zero-shot baselines, teacher caches): what identifies the data a split
holds, hashed with whatever else the stored result depends on."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from clipcite.records import SetDigest


def content_key(identity: str, sources_digest: str, record: SetDigest | None, *parts: Any, what: str) -> str:
    """sha256 over the base model's ``identity``, the source tables' ``sources_digest`` (every shard's bytes), the
    set's manifest ``record`` (the digest of its ids and its row count) and ``parts``. ``what`` names the result in
    the error raised when the splits predate the digests this needs."""
    if not identity or not sources_digest or record is None or not record.ids_sha256:
        raise ValueError(f"{what}: no base identity, source digest or id digest to key it by")
    body = [identity, sources_digest, record.ids_sha256, record.rows, *parts]
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
