"""Step 1, sample-splits: few-shot train/val splits and eval sets per domain from image tables.

Output folder: ``train/`` and ``val/`` (tables; the training classes in ``classes.json``, relabelled to the base
classes under base-to-new; validation comes from the data's val split, else from the train images beyond the K
shots, never from the eval split), ``eval/<set>/`` one table per eval set (``<domain>``, or ``<domain>-base`` and
``<domain>-new``), and ``manifest.json`` (protocol, shots, seed, source digests, per-set counts and id digests).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import sys
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from clipcite import storage
from clipcite.config import Config, SplitsConfig
from clipcite.data.folder import as_table, source_snapshot
from clipcite.data.splits import base_new_classes, relabel, sample_few_shot, val_shots
from clipcite.data.table import (
    ROW_GROUP_ROWS,
    ClassList,
    check_labels,
    read_classes,
    read_table,
    rows_with_ids,
    sources_digest,
    write_table,
)
from clipcite.logs import setup_logging
from clipcite.records import EvalSet, SetDigest, SplitsManifest
from clipcite.steps.artifact_io import write_config
from clipcite.steps.command_line import base_parser, config_from
from clipcite.steps.run_config import run_config

log = logging.getLogger(__name__)
META = ["id", "label", "classname", "domain", "split"]


def run(
    table_uri: str,
    out_uri: str,
    config: Config,
    eval_table_uris: tuple[str, ...] = (),
    expected_digest: str = "",
    config_uri: str = "",
) -> SplitsManifest:
    """Sample the splits of ``table_uri``; eval sets also come from each of ``eval_table_uris``. Each source is an
    image table or a folder of images (:mod:`clipcite.data.folder`). ``config_uri`` (a file) receives ``config``
    as YAML: the pipeline's config artifact, which the later steps read.

    ``expected_digest`` (from the pipeline's snapshot step) must match the data as read here, so the splits are
    those of the snapshot the run recorded (the manifest keeps that snapshot: every shard or image and a digest).
    """
    cfg = config.splits
    if cfg.protocol not in ("base2new", "fewshot"):
        raise ValueError(f"splits.protocol must be 'base2new' or 'fewshot', got {cfg.protocol!r}")
    sources = [source_snapshot(u) for u in (table_uri, *eval_table_uris)]
    digest = sources_digest(sources)
    if expected_digest and digest != expected_digest:
        raise ValueError(
            f"the data under {table_uri} changed after this run's snapshot (digest {digest[:12]} != "
            f"{expected_digest[:12]}); rerun the pipeline"
        )
    with contextlib.ExitStack() as stack:
        tables = [stack.enter_context(as_table(source)) for source in sources]
        manifest = _sample(tables[0], out_uri, config, tuple(tables[1:]), sources, digest)
    if config_uri:
        write_config(config_uri, config)
    return manifest


def for_pipeline(
    data_uri: str,
    eval_data_uris: tuple[str, ...],
    splits_uri: str,
    config_uri: str,
    *,
    preset: str,
    overrides: dict,
    data_digest: str,
    **parameters: object,
) -> SplitsManifest:
    """The pipeline's sample-splits: resolve the run's config from its parameters (``preset``, the named
    ``parameters`` of :data:`~clipcite.steps.run_config.CONFIG_PARAMETERS`, then ``overrides``), sample, and
    write the config as its own artifact."""
    config = run_config(preset, overrides, **parameters)
    return run(data_uri, splits_uri, config, eval_data_uris, expected_digest=data_digest, config_uri=config_uri)


def _sample(
    table_uri: str, out_uri: str, config: Config, eval_table_uris: tuple[str, ...], sources: list[dict], digest: str
) -> SplitsManifest:
    cfg = config.splits
    classes = read_classes(table_uri)
    meta = read_table(table_uri, columns=META)  # no image column: Arrow columns, tens of bytes per row
    check_labels(meta, classes, table_uri)
    # the base/new cut is made once, on the training split's classes, and applied to every eval set of this table
    train_labels = meta.filter(pc.equal(meta["split"], cfg.train_split))["label"]
    halves = _kept_classes(pc.unique(train_labels if len(train_labels) else meta["label"]).to_pylist())
    keep = halves["base" if cfg.protocol == "base2new" else "all"]
    train_classes = ClassList(tuple(classes.names[c] for c in keep), classes.template, classes.dataset)

    train_ids = _few_shot_ids(meta, cfg.train_split, cfg.shots, keep, config, classes, "train")
    val_k = val_shots(cfg.shots, cfg.val_shots)
    val_ids, val_source = _val_ids(meta, val_k, keep, config, classes)

    sets: dict[str, SetDigest] = {}
    eval_sets: list[EvalSet] = []
    with storage.staged_dir(out_uri) as tmp:
        for name, ids in (("train", train_ids), ("val", val_ids)):
            counts = write_table(_relabelled(table_uri, ids, keep), str(tmp / name), train_classes)
            sets[name] = SetDigest(counts["rows"], _ids_digest(ids))
        names_seen: set[str] = set()
        for uri in (table_uri, *eval_table_uris):
            for spec in _eval_sets(uri, cfg, classes, halves, meta if uri == table_uri else None):
                if spec["name"] in names_seen:
                    raise ValueError(
                        f"{uri}: eval set {spec['name']!r} already comes from another table; "
                        "give each eval table its own domain names"
                    )
                names_seen.add(spec["name"])
                set_classes = ClassList(
                    tuple(spec["classnames"]),
                    spec["template"],
                    spec["dataset"],
                    {"domain": spec["domain"], "subset": spec["subset"]},
                )
                counts = write_table(
                    _relabelled(uri, spec["ids"], spec["labels"]), str(tmp / "eval" / spec["name"]), set_classes
                )
                sets[f"eval/{spec['name']}"] = SetDigest(counts["rows"], _ids_digest(spec["ids"]))
                eval_sets.append(EvalSet(spec["name"], spec["domain"], spec["subset"]))
        manifest = SplitsManifest(
            protocol=cfg.protocol,
            shots=cfg.shots,
            seed=config.seed,
            val_shots=val_k,
            val_source=val_source,
            sources=tuple(sources),
            sources_digest=digest,
            train_classes=tuple(train_classes.names),
            train_domains=tuple(_domains_of(meta, train_ids)),
            sets=sets,
            eval_sets=tuple(eval_sets),
        )
        manifest.write(tmp)
    log.info("wrote %s: %d train, %d val, %d eval set(s)", out_uri, len(train_ids), len(val_ids), len(eval_sets))
    return manifest


def _kept_classes(labels: list[int]) -> dict[str, list[int]]:
    base, new = base_new_classes(labels)
    return {"base": base, "new": new, "all": base + new}


def _few_shot_ids(
    meta: pa.Table,
    split: str,
    k: int,
    keep: list[int],
    config: Config,
    classes: ClassList,
    what: str,
    optional: bool = False,
    skip: int = 0,
) -> list[str]:
    cfg = config.splits
    mask = pc.and_(pc.equal(meta["split"], split), pc.is_in(meta["label"], value_set=pa.array(keep, pa.int64())))
    if cfg.train_domains:
        mask = pc.and_(mask, pc.is_in(meta["domain"], value_set=pa.array(list(cfg.train_domains), pa.string())))
    rows = meta.filter(pc.fill_null(mask, False))
    if not rows.num_rows:
        if optional:
            return []
        splits = sorted(pc.unique(meta["split"]).to_pylist())
        domains = sorted(pc.unique(meta.filter(pc.equal(meta["split"], split))["domain"]).to_pylist())
        raise ValueError(
            f"no rows with split={split!r}"
            + (f" in domains {list(cfg.train_domains)}" if cfg.train_domains else "")
            + f" to sample the training shots from. The table has splits {splits}"
            + (f" and, in {split!r}, domains {domains}" if domains else "")
            + "; choose with --set splits.train_domains=[...] (or splits.train_split=...)"
        )
    ids = rows["id"].to_pylist()
    picked = sample_few_shot(
        ids,
        rows["label"].to_pylist(),
        k,
        config.seed,
        # validation at the default size (val_shots=0: up to K) takes what there is; an explicit size is required
        allow_fewer=cfg.allow_fewer or (optional and not cfg.val_shots),
        classnames=classes.names,
        what=f"{split!r}",
        skip=skip,
        flag="splits.val_shots" if optional else "shots",
    )
    return [ids[i] for i in picked]


def _val_ids(meta: pa.Table, k: int, keep: list[int], config: Config, classes: ClassList) -> tuple[list[str], str]:
    """The validation images (base classes only under base-to-new: ``keep``, the trained classes) and the split
    they came from: the data's ``splits.val_split`` when it has rows for the trained classes and domains, else the
    train images ranked after the K training shots (the same seeded ranking, so disjoint from them). Never the eval
    split. An explicit ``splits.val_shots`` a class cannot fill is an error naming that setting."""
    cfg = config.splits
    if ids := _few_shot_ids(meta, cfg.val_split, k, keep, config, classes, "val", optional=True):
        return ids, cfg.val_split
    log.info(
        "no %r rows: validation comes from the %r images beyond the %d shots", cfg.val_split, cfg.train_split, cfg.shots
    )
    ids = _few_shot_ids(meta, cfg.train_split, k, keep, config, classes, "val", optional=True, skip=cfg.shots)
    if not ids:
        log.warning("no validation images (no %r split, no %r images beyond the shots)", cfg.val_split, cfg.train_split)
    return ids, cfg.train_split if ids else ""


def _eval_sets(
    table_uri: str, cfg: SplitsConfig, source_classes: ClassList, halves: dict, meta: list[dict] | None = None
) -> Iterator[dict]:
    """The eval sets one table contributes: per domain, all classes or its base and new halves.

    ``halves`` is the cut made on the training table's train split; a table of the same classes (``source_classes``)
    uses it, a table of another dataset is cut on its own class list (``classes.json``), never on the labels its
    eval rows happen to have.
    """
    classes = read_classes(table_uri)
    if meta is None:
        meta = read_table(table_uri, columns=META)
        check_labels(meta, classes, table_uri)
    meta = meta.filter(pc.fill_null(pc.equal(meta["split"], cfg.eval_split), False))
    domains = sorted(pc.unique(meta["domain"]).to_pylist())
    if cfg.eval_domains:
        domains = [d for d in domains if d in cfg.eval_domains]
    if classes.names != source_classes.names:
        halves = _kept_classes(list(range(len(classes.names))))
    subsets = (
        [("base", halves["base"]), ("new", halves["new"])] if cfg.protocol == "base2new" else [("all", halves["all"])]
    )
    for domain in domains:
        for subset, keep in subsets:
            kept = pc.is_in(meta["label"], value_set=pa.array(keep, pa.int64()))
            ids = meta.filter(pc.fill_null(pc.and_(pc.equal(meta["domain"], domain), kept), False))["id"]
            if not len(ids):
                continue
            yield {
                "name": domain if subset == "all" else f"{domain}-{subset}",
                "domain": domain,
                "subset": subset,
                "ids": ids.to_pylist(),
                "labels": keep,
                "classnames": [classes.names[c] for c in keep],
                "template": classes.template,
                "dataset": classes.dataset,
            }


def _relabelled(table_uri: str, ids: list[str], keep: list[int]) -> Iterator[dict]:
    """Stream the chosen rows (images included) in table order, labels mapped onto ``keep``; at most
    ROW_GROUP_ROWS rows are held here at a time."""
    chunk: list[dict] = []
    for row in itertools.chain(rows_with_ids(table_uri, ids), [None]):
        if row is not None:
            chunk.append(row)
        if chunk and (row is None or len(chunk) >= ROW_GROUP_ROWS):
            for item, label in zip(chunk, relabel([r["label"] for r in chunk], keep), strict=True):
                yield {**item, "label": label}
            chunk = []


def _domains_of(meta: pa.Table, ids: list[str]) -> list[str]:
    chosen = meta.filter(pc.is_in(meta["id"], value_set=pa.array(ids, pa.string())))
    return sorted(pc.unique(chosen["domain"]).to_pylist())


def _ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def summary_line(manifest: SplitsManifest, out: str) -> str:
    """What sample-splits prints: the protocol and each set's size in one line (the ids' digests and everything
    else stay in ``manifest.json``, which it names)."""
    sets = ", ".join(f"{name} {entry.rows}" for name, entry in manifest.sets.items())
    return (
        f"{manifest.protocol}, {manifest.shots} shots, seed {manifest.seed}: {sets} images "
        f"(manifest: {storage.join(out, SplitsManifest.FILE)})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("sample-splits", "Sample few-shot train/val splits and eval sets from an image table.")
    parser.add_argument("--table", required=True, help="image table folder or s3:// prefix")
    parser.add_argument("--eval-table", action="append", default=[], help="more tables to evaluate on (repeatable)")
    parser.add_argument("--out", required=True, help="folder or s3:// prefix for the splits and manifest.json")
    parser.add_argument("--config-out", default="", help="write the resolved config here (the later steps' --config)")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    manifest = run(args.table, args.out, config_from(args), tuple(args.eval_table), config_uri=args.config_out)
    print(summary_line(manifest, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
