"""Write the toy world as an image table: ``python -m clipcite.toyworld.generate --out runs/toyworld/table``."""

from __future__ import annotations

import argparse
import json
import logging

from clipcite.data.table import ClassList, write_table
from clipcite.toyworld.world import DOMAINS, classnames, iter_rows

log = logging.getLogger(__name__)

TEMPLATE = "a photo of a {}."
DEFAULT_COUNTS = {"train": 24, "val": 8, "test": 20}  # images per class and domain


def write_world(
    out_uri: str, *, seed: int = 1, counts: dict[str, int] | None = None, domains: tuple[str, ...] = DOMAINS
) -> dict:
    """Render every (split, domain, class) and write one table with train/val/test per domain."""
    counts = counts or DEFAULT_COUNTS
    classes = ClassList(tuple(classnames()), TEMPLATE, "toyworld", {"domains": list(domains), "seed": seed})
    result = write_table(iter_rows(seed, counts, domains), out_uri, classes)
    log.debug("wrote toy world %s: %s", out_uri, result)  # the command prints it; pipeline.py run logs its own line
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the toy world (48 classes, 4 domains) as an image table.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=1)
    for split, count in DEFAULT_COUNTS.items():
        parser.add_argument(f"--{split}", type=int, default=count, help=f"{split} images per class and domain")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    counts = {"train": args.train, "val": args.val, "test": args.test}
    print(json.dumps(write_world(args.out, seed=args.seed, counts=counts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
