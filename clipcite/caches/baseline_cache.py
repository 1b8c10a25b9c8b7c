"""The zero-shot baseline's per-set metrics, cached by content across runs.

The zero-shot model's predictions on an eval set are a pure function of the base model, the set's images and
labels, its class prompts and the precision the model runs at. A rerun with another training config (alpha, lr,
method, loss weights) changes none of these, so ``evaluate`` reads the baseline from ``<root>/<key>.json`` instead
of running the zero-shot model again. The key covers everything the predictions depend on; anything else (batch
size, workers, ranks) does not change them and stays out.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from clipcite import storage
from clipcite.caches.content_key import content_key
from clipcite.records import SetDigest

log = logging.getLogger(__name__)

FORMAT = 2  # bump when the stored metrics change shape or meaning (old entries are then never read)


def baseline_key(
    base_identity: str,
    sources_digest: str,
    set_name: str,
    set_record: SetDigest | None,
    prompts: list[str],
    precision: str,
) -> str:
    """The cache key of one eval set's zero-shot metrics.

    ``sources_digest`` fingerprints the image tables the splits were cut from (every shard's bytes); ``set_record``
    is the set's entry in the splits manifest (rows and the digest of its ids); ``prompts`` are its class prompts in
    label order (so the label mapping and the template are in the key); ``precision`` is the resolved one (bf16 or
    fp32), since bf16 can flip near-tied predictions.
    """
    what = f"eval set {set_name!r}'s zero-shot baseline"
    return content_key(base_identity, sources_digest, set_record, FORMAT, set_name, list(prompts), precision, what=what)


def read_baseline(root: str, key: str) -> dict[str, Any] | None:
    """The cached metrics for ``key`` under ``root``, or None when there are none (or the entry is unreadable)."""
    if not root:
        return None
    uri = storage.join(root, f"{key}.json")
    if not storage.exists(uri):
        return None
    try:
        entry = json.loads(storage.read_text(uri))
    except (OSError, ValueError) as e:  # a damaged entry costs one recomputation, never a wrong number
        log.warning("%s: unreadable cached baseline (%s); evaluating the zero-shot model again", uri, e)
        return None
    if entry.get("key") != key or "metrics" not in entry:
        log.warning("%s: not the baseline for this key; evaluating the zero-shot model again", uri)
        return None
    metrics: dict[str, Any] = entry["metrics"]
    return metrics


def write_baseline(root: str, key: str, metrics: dict[str, Any], description: dict[str, Any]) -> None:
    """Store ``metrics`` under ``key`` (one object per key, written whole: a reader never sees half of it)."""
    if root:
        entry = {"key": key, "format": FORMAT, "set": description, "metrics": metrics}
        storage.write_text(storage.join(root, f"{key}.json"), json.dumps(entry))
