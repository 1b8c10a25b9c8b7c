"""The steps' command lines: the flags every step shares (``--config``, ``--set``, ``-v``)."""

from __future__ import annotations

import argparse

from clipcite.config import Config, load_config


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    """``--set key=value`` (repeatable) into ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=5 (repeatable)",
    )


def base_parser(command: str, description: str) -> argparse.ArgumentParser:
    """A step's parser, named as the user runs it (``usage: clipcite finetune ...``), with the flags every step
    shares."""
    parser = argparse.ArgumentParser(prog=f"clipcite {command}", description=description)
    parser.add_argument("--config", help="YAML config: a file or a preset name (default, demo_cpu, paper_vitb16)")
    add_overrides_argument(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def config_from(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)
