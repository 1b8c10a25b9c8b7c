"""What the steps hand each other besides tables and models: a split's rows and prompts, the resolved config, the
pipeline's MLflow run reference, small JSON files."""

from __future__ import annotations

import json

from clipcite import storage
from clipcite.config import Config, config_from_yaml, dump_yaml
from clipcite.data.prompts import prompts_for, template_for
from clipcite.data.rows import ImageRows
from clipcite.data.table import ClassList, read_classes
from clipcite.records import SplitsManifest


def read_split(table_uri: str) -> tuple[ImageRows, ClassList]:
    """A split's rows as metadata (images are fetched per batch, never all held: :mod:`clipcite.data.rows`), and
    its classes."""
    return ImageRows.scan(table_uri), read_classes(table_uri)


def class_prompts(classes: ClassList, config: Config) -> tuple[str, list[str]]:
    """The template (config wins over classes.json) and one prompt per class in label order."""
    template = template_for(classes.dataset, config.model.template or classes.template)
    return template, prompts_for(template, classes.names)


def read_val_split(splits_uri: str, config: Config) -> tuple[ImageRows, list[str]]:
    """The validation split's rows and its classes' prompts (what validate and train.alpha_grid score on)."""
    rows, classes = read_split(storage.join(splits_uri, "val"))
    return rows, class_prompts(classes, config)[1]


def require_validation(splits_uri: str, purpose: str, otherwise: str, rows: int | None = None) -> None:
    """Fail, saying what to change, when the splits hold no validation images (``rows``: counted already; else the
    manifest's count, so a run fails before it trains)."""
    if rows is None:
        rows = SplitsManifest.read(splits_uri).val_rows
    if not rows:
        raise ValueError(
            f"{splits_uri}/val: no validation images to {purpose}: give the data a val split or more train images "
            f"than the shots (splits.val_shots), or {otherwise}"
        )


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


def read_json(uri: str) -> dict:
    return json.loads(storage.read_text(uri))
