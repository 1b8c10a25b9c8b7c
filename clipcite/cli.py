"""The ``clipcite`` command: ingest, then the pipeline's steps (snapshot to register), plus aggregate and champion.

Each command's module is imported only when that command runs, so ``clipcite --help`` and argument errors answer
without loading torch or MLflow.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

from clipcite.tracking import default_uri

log = logging.getLogger("clipcite")

STEPS = {
    "snapshot": "clipcite.steps.snapshot",
    "sample-splits": "clipcite.steps.sample_splits",
    "cache-teacher": "clipcite.steps.cache_teacher",
    "finetune": "clipcite.steps.finetune",
    "validate": "clipcite.steps.validate",
    "select": "clipcite.steps.select",
    "evaluate": "clipcite.steps.evaluate",
    "register": "clipcite.steps.register",
}


def ingest_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clipcite ingest", description="Convert images to an image table.")
    parser.add_argument(
        "format", choices=["imagefolder", "coop"], help="imagefolder: a tree of images; coop: a CoOp dataset in $DATA"
    )
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
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if not args.root:
        parser.error("--root is required")
    if args.format == "coop" and not args.dataset:
        parser.error("coop needs --dataset")
    from clipcite.data.ingest import ingest_coop, ingest_imagefolder
    from clipcite.logs import setup_logging

    setup_logging(args.verbose)
    common = {"template": args.template, "verify": args.verify, "skip_bad_images": args.skip_bad_images}
    if args.format == "coop":
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
    parser = argparse.ArgumentParser(
        prog="clipcite aggregate", description="Mean and std over seeds of several evaluate outputs."
    )
    parser.add_argument("metrics", nargs="+", help="evaluate output folders (or their metrics.json)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument(
        "--allow-mixed", action="store_true", help="average evaluations of different methods, settings or domains"
    )
    args = parser.parse_args(argv)
    from clipcite.logs import setup_logging
    from clipcite.steps.aggregate import aggregate_runs

    setup_logging()
    result = aggregate_runs(args.metrics, args.out, allow_mixed=args.allow_mixed)
    print(json.dumps(result["mean"], indent=2))
    return 0


def champion_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="clipcite champion",
        description="Show a registered model's versions and gate decisions (* = the champion); --promote moves the "
        "champion alias (a rollback, or overriding the gate by hand).",
    )
    parser.add_argument("name", help="registered model name")
    parser.add_argument(
        "--promote", dest="version", type=int, metavar="VERSION", help="give the champion alias to VERSION"
    )
    parser.add_argument(
        "--set", dest="old_version", type=int, metavar="VERSION", help="deprecated spelling of --promote"
    )
    parser.add_argument("--reason", default="set by hand", help="why, recorded on the version and its model card")
    parser.add_argument("--tracking-uri", default="", help=default_uri.HELP)
    args = parser.parse_args(argv)
    if args.old_version is not None:
        log.warning("champion --set VERSION is deprecated (--set KEY=VALUE elsewhere): use --promote VERSION")
        args.version = args.version if args.version is not None else args.old_version
    uri = default_uri.default_tracking_uri(args.tracking_uri)
    default_uri.require_store(uri)
    from clipcite.logs import setup_logging
    from clipcite.tracking import registry, runs

    setup_logging()
    client = runs.connect(uri)
    if args.version is not None:
        registry.promote_by_hand(client, args.name, args.version, args.reason)
    rows = registry.version_table(client, args.name)
    if not rows:
        known = sorted(m.name for m in client.search_registered_models())
        raise ValueError(
            f"no registered model {args.name!r} with versions in {uri} (registered there: "
            f"{', '.join(known) or 'none'}); check the name, or pass --tracking-uri for another store"
        )
    for row in rows:
        print(row)
    return 0


def _step_main(name: str):
    def run(argv: list[str]) -> int:
        return importlib.import_module(STEPS[name]).main(argv)

    return run


COMMANDS = {
    "ingest": ingest_main,
    **{name: _step_main(name) for name in STEPS},
    "aggregate": aggregate_main,
    "champion": champion_main,
}
# One line per command for `clipcite --help` (each command's own --help has the rest).
SUMMARIES = {
    "ingest": "convert a folder of images or a CoOp dataset to an image table",
    "snapshot": "fingerprint the data and open the pipeline's MLflow run (the pipeline's first step)",
    "sample-splits": "sample the few-shot train/val splits and the eval sets from an image table",
    "cache-teacher": "cache the frozen teacher's features for every class prompt and train crop",
    "finetune": "fine-tune CLIP on the few-shot split (CLIP-CITE by default)",
    "validate": "score a fine-tuned model on the validation split (one candidate of several methods)",
    "select": "pick one of several candidate models by their validation scores (docs/cluster.md)",
    "evaluate": "evaluate the fine-tuned and the zero-shot model on the eval sets",
    "register": "merge the evaluations, record the model; with an MLflow run, register it and apply the gate",
    "aggregate": "mean and std over seeds of several evaluate outputs",
    "champion": "list a registered model's versions and gate decisions; --promote moves the champion alias",
}
USAGE = (
    "usage: clipcite COMMAND [options]   (clipcite COMMAND --help for its options)\n\ncommands:\n"
    + "".join(f"  {name:<14} {SUMMARIES[name]}\n" for name in COMMANDS)
    + "\ncache-teacher, finetune and evaluate also take --nproc-per-node N: N data-parallel torchrun ranks"
)
RANKED = ("cache-teacher", "finetune", "evaluate")


def take_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc-per-node N``, whose N goes to ``CLIPCITE_NPROC_PER_NODE``: the step's ``run()``
    then relaunches itself in N ranks under ``torch.distributed.run --standalone``
    (clipcite/training/distributed.py)."""
    out, value, rest = [], None, iter(argv)
    for arg in rest:
        if arg == "--nproc-per-node":
            value = next(rest, "")
        elif arg.startswith("--nproc-per-node="):
            value = arg.split("=", 1)[1]
        else:
            out.append(arg)
    if value is not None:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"--nproc-per-node {value!r}: give the number of ranks (processes) to start, e.g. 2")
        # The variable the pipeline sets on its GPU tasks (settings.gpu_task), read in one place for every ranked
        # step (training.distributed.requested_ranks); a parameter instead would run through each step's run().
        os.environ["CLIPCITE_NPROC_PER_NODE"] = value
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # no command: the commands, as an argument error (argparse's convention)
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] not in COMMANDS:
        print(f"{USAGE}\nclipcite: error: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    try:
        if argv[0] in RANKED:
            argv = take_nproc(argv)
            if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 alone prints the step's result
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of this rank's life)
        with default_uri.named_by_flag():
            return COMMANDS[argv[0]](argv[1:])
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Bad input: one clear line naming the file/row/field, no traceback (the step's log has the detail).
        print(f"clipcite {argv[0]}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
