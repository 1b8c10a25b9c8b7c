"""Logging for the command lines and torchrun's worker processes: one format, on stderr, noisy libraries quieted."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("PIL", "matplotlib", "urllib3", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
