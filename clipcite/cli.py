"""The ``clipcite`` command: ingest, then the four pipeline steps, plus aggregate over seeds."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from clipcite.steps import cache_teacher, evaluate, finetune, sample_splits
from clipcite.steps.common import setup_logging

log = logging.getLogger("clipcite")

STEPS = {
    "sample-splits": sample_splits.main,
    "cache-teacher": cache_teacher.main,
    "finetune": finetune.main,
    "evaluate": evaluate.main,
}


def ingest_main(argv: list[str]) -> int:
    from clipcite.data.ingest import ingest_coop, ingest_imagefolder

    parser = argparse.ArgumentParser(prog="clipcite ingest", description="Convert images to an image table.")
    parser.add_argument("format", choices=["imagefolder", "coop"])
    parser.add_argument("--root", help="imagefolder: the tree's root; coop: $DATA")
    parser.add_argument("--dataset", default="", help="coop: dataset name (e.g. oxford_pets); imagefolder: a name")
    parser.add_argument("--out", required=True, help="output table folder or s3:// prefix")
    parser.add_argument(
        "--layout", default="class", help="imagefolder levels, e.g. class, domain/class, split/domain/class"
    )
    parser.add_argument("--split", default="train", help="imagefolder: split name when the layout has none")
    parser.add_argument("--domain", default="default", help="imagefolder: domain name when the layout has none")
    parser.add_argument("--template", default="", help="prompt template (default: the dataset's CoOp template)")
    parser.add_argument(
        "--verify",
        default="full",
        choices=["full", "header", "none"],
        help="how thoroughly to check that each image decodes",
    )
    parser.add_argument("--skip-bad-images", action="store_true", help="skip and count unreadable images")
    args = parser.parse_args(argv)
    setup_logging()
    if not args.root:
        parser.error("--root is required")
    common = {"template": args.template, "verify": args.verify, "skip_bad_images": args.skip_bad_images}
    if args.format == "coop":
        if not args.dataset:
            parser.error("coop needs --dataset")
        counts = ingest_coop(args.root, args.dataset, args.out, **common)
    else:
        counts = ingest_imagefolder(
            args.root,
            args.out,
            layout=args.layout,
            split=args.split,
            domain=args.domain,
            dataset=args.dataset,
            **common,
        )
    print(json.dumps(counts))
    return 0


def aggregate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clipcite aggregate", description="Mean and std over seeds.")
    parser.add_argument("metrics", nargs="+", help="evaluate output folders (or their metrics.json)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    setup_logging()
    result = evaluate.aggregate_runs(args.metrics, args.out)
    print(json.dumps(result["mean"], indent=2))
    return 0


def champion_main(argv: list[str]) -> int:
    from clipcite import tracking

    parser = argparse.ArgumentParser(
        prog="clipcite champion",
        description="Show a registered model's versions and gate decisions; --set moves the champion alias "
        "(a rollback, or overriding the gate by hand).",
    )
    parser.add_argument("name", help="registered model name")
    parser.add_argument("--set", dest="version", type=int, help="give the champion alias to this version")
    parser.add_argument("--reason", default="set by hand", help="recorded on the version with --set")
    parser.add_argument("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI")
    args = parser.parse_args(argv)
    setup_logging()
    client = tracking.connect(args.tracking_uri)
    if args.version is not None:
        tracking.promote_by_hand(client, args.name, args.version, args.reason)
    for row in tracking.version_table(client, args.name):
        print(row)
    return 0


COMMANDS = {"ingest": ingest_main, **STEPS, "aggregate": aggregate_main, "champion": champion_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: clipcite {" + ",".join(COMMANDS) + "} [options]   (clipcite COMMAND --help for options)")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Bad input: one clear line naming the file/row/field, no traceback.
        log.error("%s", e)
        print(f"clipcite {argv[0]}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
