"""Teacher caches kept by content across runs, so a rerun with other training settings reuses the teacher's work.

The teacher cache is a pure function of the base model, the train split's images and labels, its class prompts,
the seed, the number of epochs and the crop settings (which fix every crop), the storage dtype and the precision
the teacher ran at. A rerun that changes only what training does with it (alpha, lr, loss weights, method, batch
size) gets a new ``sample-splits`` artifact, so KFP's own cache (keyed by the upstream artifact) misses; this store,
keyed by content, does not: ``cache-teacher`` copies ``<store>/<key>/`` instead of running the teacher again.
Anything else (batch size of the teacher, workers, ranks) does not change the features and stays out of the key.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from clipcite import storage
from clipcite.caches.content_key import content_key
from clipcite.records import SplitsManifest
from clipcite.training.teacher_cache import META_FILE, TENSORS_FILE, CacheMeta, load_cache

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the cache files change shape or meaning (old entries are then never read)
KEY_FILE = "key.json"


def teacher_key(
    *,
    identity: str,
    manifest: SplitsManifest,
    prompts: list[str],
    seed: int,
    epochs: int,
    crop_scale: tuple[float, float],
    crop_ratio: tuple[float, float],
    dtype: str,
    precision: str,
) -> str:
    """The content key of a teacher cache. ``manifest`` is the splits' manifest: its ``sources_digest`` names the
    data the split was cut from and ``sets.train`` the chosen ids (their digest and count); ``precision`` is the
    resolved one (bf16 or fp32)."""
    crops = [list(crop_scale), list(crop_ratio)]
    parts = [FORMAT, list(prompts), seed, epochs, *crops, dtype, precision]
    train = manifest.digest_of("train")
    return content_key(identity, manifest.sources_digest, train, *parts, what="the teacher cache")


def restore(store: str, key: str, out_uri: str) -> CacheMeta | None:
    """Copy the stored cache for ``key`` to ``out_uri`` and return its metadata; None (and nothing written) when
    there is none or it does not load (a damaged entry costs one recomputation, never a wrong cache)."""
    if not store:
        return None
    entry = storage.join(store, key)
    if not storage.exists(storage.join(entry, KEY_FILE)):
        return None
    try:
        with storage.local_dir(entry) as source, storage.staged_dir(out_uri) as tmp:
            if json.loads((source / KEY_FILE).read_text()).get("key") != key:
                raise ValueError(f"{entry}: holds another key")
            for name in (TENSORS_FILE, META_FILE):
                shutil.copy2(source / name, tmp / name)
            meta = load_cache(tmp).meta  # complete and readable, or no output at all
    except Exception as e:  # safetensors and json raise many types for a damaged file
        log.warning("%s: unusable stored teacher cache (%s); running the teacher again", entry, e)
        return None
    log.info("teacher cache reused from %s (key %s): the teacher did not run", entry, key[:12])
    return meta


def keep(store: str, key: str, folder: Path) -> None:
    """Store the cache files in the local ``folder`` (where the step has just written them, before they go to its
    output: nothing is read back from s3) under ``key``; the key file goes with them, checked on reuse. The store
    only saves later runs work: a failure to write it is logged, and the step's own output still goes out."""
    if not store:
        return
    entry = storage.join(store, key)
    try:
        with storage.staged_dir(entry) as tmp:
            for name in (TENSORS_FILE, META_FILE):
                shutil.copy2(folder / name, tmp / name)
            (tmp / KEY_FILE).write_text(json.dumps({"key": key, "format": FORMAT}))
    except Exception as e:  # S3 and file systems raise many types; none of them is the step's failure
        log.warning("%s: could not keep the teacher cache for later runs (%s: %s)", entry, type(e).__name__, e)
        return
    log.info("teacher cache kept in %s for later runs", entry)
