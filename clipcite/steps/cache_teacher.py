"""Step 2, cache-teacher: the frozen CLIP's text features for every class prompt and image features for every
(epoch, train image) crop, so that fine-tuning needs no teacher network (method.md "Teacher outputs...")."""

from __future__ import annotations

import json
import logging
import sys

from clipcite import storage
from clipcite.caches import teacher_store
from clipcite.config import Config
from clipcite.data.table import read_classes
from clipcite.logs import setup_logging
from clipcite.model.clip import load_model, resolve_device
from clipcite.model.identity import checkpoint_identity
from clipcite.model.precision import resolve_precision
from clipcite.records import SplitsManifest
from clipcite.steps.artifact_io import class_prompts, read_split
from clipcite.steps.command_line import base_parser, config_from
from clipcite.training import distributed
from clipcite.training.teacher_cache import CacheMeta, build_cache, save_cache

log = logging.getLogger(__name__)


def run(splits_uri: str, out_uri: str, config: Config, *, expected_identity: str = "", store: str = "") -> dict:
    """Build and write the cache; ``expected_identity`` (the pipeline's snapshot of the base model) must match the
    weights loaded here, checked before any teacher work. ``CLIPCITE_NPROC_PER_NODE`` > 1 shares the images out
    over that many torchrun ranks (rank 0 writes the same cache as one process). ``store`` (a folder or s3://
    prefix; "" = off) keeps caches by content (:mod:`clipcite.caches.teacher_store`): a run whose teacher inputs
    match a stored
    one copies it instead of running the teacher."""
    key = content_key(splits_uri, config, expected_identity) if store else ""
    stored = teacher_store.restore(store, key, out_uri) if key else None
    if stored is not None:
        return {**_summary(stored), "reused": key}
    return _ranks_run(splits_uri, out_uri, config, expected_identity, store, key)


def content_key(splits_uri: str, config: Config, expected_identity: str = "") -> str:
    """The teacher cache's content key for these splits and config (what changes the teacher's outputs only)."""
    train_uri = storage.join(splits_uri, "train")
    _, prompts = class_prompts(read_classes(train_uri), config)
    model = config.model
    return teacher_store.teacher_key(
        identity=expected_identity or checkpoint_identity(model.arch, model.pretrained, init_seed=model.init_seed),
        manifest=SplitsManifest.read(splits_uri),
        prompts=prompts,
        seed=config.seed,
        epochs=config.train.epochs,
        crop_scale=config.train.crop_scale,
        crop_ratio=config.train.crop_ratio,
        dtype=config.teacher.dtype,
        precision=resolve_precision(resolve_device(config.device), config.train.precision),
    )


def _summary(meta: CacheMeta) -> dict:
    return {
        "identity": meta.identity,
        "images": len(meta.ids),
        "epochs": meta.epochs,
        "classes": len(meta.prompts),
        "dtype": meta.dtype,
        "precision": meta.precision,
    }


@distributed.relaunch_in_ranks()  # after the store's lookup: a stored cache starts no rank
def _ranks_run(splits_uri: str, out_uri: str, config: Config, expected_identity: str, store: str, key: str) -> dict:
    """The teacher's pass in this process, one of the ranks or the only one; rank 0 writes the cache."""
    with distributed.process_group(resolve_device(config.device)):
        summary = _run(splits_uri, out_uri, config, expected_identity, store, key)
        distributed.barrier()  # no rank returns before rank 0 has written the cache
    return summary


def _run(splits_uri: str, out_uri: str, config: Config, expected_identity: str, store: str, key: str) -> dict:
    train_uri = storage.join(splits_uri, "train")
    rows, classes = read_split(train_uri)
    _, prompts = class_prompts(classes, config)
    device = resolve_device(config.device)
    teacher = load_model(config.model.arch, config.model.pretrained, init_seed=config.model.init_seed, device=device)
    if expected_identity and teacher.identity != expected_identity:
        raise ValueError(
            f"the base model changed during this run: snapshot saw {expected_identity}, cache-teacher loaded "
            f"{teacher.identity}; rerun the pipeline"
        )
    cache = build_cache(
        teacher,
        rows,
        prompts,
        seed=config.seed,
        epochs=config.train.epochs,
        crop_scale=config.train.crop_scale,
        crop_ratio=config.train.crop_ratio,
        batch_size=config.teacher.batch_size,
        device=device,
        dtype=config.teacher.dtype,
        precision=config.train.precision,
        num_workers=config.train.num_workers,
        decode_cache_mb=config.train.decode_cache_mb,
        source=f"{train_uri}: ",
    )
    if distributed.is_main():
        with storage.staged_dir(out_uri) as tmp:
            save_cache(cache, tmp)
            teacher_store.keep(store, key, tmp)  # from the local files: an s3 output is not downloaded again
    summary = _summary(cache.meta)
    log.info("wrote teacher cache %s: %s", out_uri, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("cache-teacher", "Cache the frozen teacher's features for every class prompt and train crop.")
    parser.add_argument("--splits", required=True, help="output folder of sample-splits")
    parser.add_argument("--out", required=True, help="folder or s3:// prefix for the teacher cache")
    parser.add_argument("--store", default="", help="keep/reuse teacher caches by content under this folder or s3://")
    distributed.add_ranks_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    print(json.dumps(run(args.splits, args.out, config_from(args), store=args.store), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
