"""What the steps share: device choice, reading a split's rows and prompts, CLI plumbing."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from clipcite import storage
from clipcite.config import Config, config_from_yaml, dump_yaml, load_config
from clipcite.data.rows import ImageRows
from clipcite.data.table import ClassList, read_classes
from clipcite.prompts import prompts_for, template_for


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch  # here, not at the top: the CPU-only steps share this module and must start without torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def read_split(table_uri: str) -> tuple[ImageRows, ClassList]:
    """A split's rows as metadata (images are fetched per batch, never all held: :mod:`clipcite.data.rows`), and
    its classes."""
    return ImageRows.scan(table_uri), read_classes(table_uri)


def class_prompts(classes: ClassList, config: Config) -> tuple[str, list[str]]:
    """The template (config wins over classes.json) and one prompt per class in label order."""
    template = template_for(classes.dataset, config.model.template or classes.template)
    return template, prompts_for(template, classes.names)


def write_config(uri: str, config: Config) -> None:
    """The run's resolved config as YAML: the pipeline's ``run_config`` artifact, which every later step reads, and
    a valid ``--config`` for the CLI."""
    storage.write_text(uri, dump_yaml(config))


def read_config(uri: str) -> Config:
    """A config written by :func:`write_config` (or any config YAML file), with its path in any error."""
    return config_from_yaml(storage.read_text(uri), where=str(uri))


def write_mlflow_run(uri: str, run_id: str) -> None:
    """The pipeline's MLflow run id ("" with tracking off) as the small artifact snapshot hands the steps that log."""
    storage.write_text(uri, json.dumps({"mlflow_run_id": run_id}))


def read_mlflow_run(uri: str) -> str:
    want = '{"mlflow_run_id": "<run id>"} ("" with tracking off)'
    try:
        run_id = read_json(uri)["mlflow_run_id"]
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{uri}: not an MLflow run reference (want {want}): {e!r}") from None
    if not isinstance(run_id, str):
        raise ValueError(f"{uri}: mlflow_run_id is {run_id!r}, not a string (want {want})")
    return run_id


def pipeline_config(config: str, parameters: dict, overrides: dict) -> Config:
    """A pipeline run's config: the preset, then its named parameters ("" keeps the preset's value), then the
    free-form ``overrides`` (dotted keys), which win. Every component that needs the config resolves it here."""
    chosen = [(key, value) for key, value in parameters.items() if value != ""]
    return load_config(config, [*chosen, *overrides.items()])


def read_json(uri: str) -> dict:
    return json.loads(storage.read_text(uri))


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


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("PIL", "matplotlib", "urllib3", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
