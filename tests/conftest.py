"""Shared fixtures: a generated ImageFolder, its table, and the tiny random-weight open_clip model."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest

from clipcite.config import load_config
from clipcite.data.demo_folder import make_imagefolder
from clipcite.data.ingest import ingest_imagefolder
from clipcite.model.clip import load_model
from clipcite.tracking import runs

TINY = ["model.arch=clipcite-tiny", "model.pretrained=", "device=cpu"]


@pytest.fixture(autouse=True)
def _quiet_open_clip():
    logging.getLogger().setLevel(logging.ERROR)


@contextlib.contextmanager
def reached_servers_restored() -> Iterator[None]:
    """``runs.connect`` remembers the servers that answered, to check each once per process; put the set back, so
    that no test takes a port a stopped server had for a checked one."""
    reached = set(runs._REACHED)
    try:
        yield
    finally:
        runs._REACHED.clear()
        runs._REACHED.update(reached)


@pytest.fixture(autouse=True)
def _reached_per_test():
    with reached_servers_restored():
        yield


@pytest.fixture(autouse=True, scope="module")
def _reached_per_module():
    """Module fixtures (a module's servers) connect too; autouse, so it is set up before them."""
    with reached_servers_restored():
        yield


@pytest.fixture(scope="session")
def imagefolder(tmp_path_factory):
    return make_imagefolder(
        tmp_path_factory.mktemp("images"), num_classes=6, per_split={"train": 6, "val": 2, "test": 4}
    )


@pytest.fixture(scope="session")
def table(imagefolder, tmp_path_factory):
    out = tmp_path_factory.mktemp("table") / "table"
    ingest_imagefolder(str(imagefolder), str(out), layout="split/domain/class", dataset="demo")
    return out


@pytest.fixture(scope="module")
def train_rows(table, tmp_path_factory):
    """A 4-shot train split of the demo table as rows, and one prompt per class in label order."""
    from clipcite.data.prompts import prompts_for
    from clipcite.data.table import read_table
    from clipcite.steps.sample_splits import run as sample_splits

    out = tmp_path_factory.mktemp("splits") / "splits"
    sample_splits(str(table), str(out), tiny_config("splits.shots=4"))
    rows = read_table(str(out / "train")).to_pylist()
    names = sorted({(r["label"], r["classname"]) for r in rows})
    return rows, prompts_for("a photo of a {}.", [n for _, n in names])


@pytest.fixture
def tiny():
    return load_model("clipcite-tiny", "", init_seed=0)


def tiny_config(*overrides: str):
    return load_config(overrides=[*TINY, *overrides])


class Interrupt(Exception):
    """A run killed mid-training (raised from a fit log_fn)."""


def stop_in_epoch(epoch: int):
    """A fit ``log_fn`` that raises :class:`Interrupt` at the first step of ``epoch``: a run killed there."""

    def log_fn(metrics, step):
        if metrics["epoch"] == epoch:
            raise Interrupt

    return log_fn


def pytest_addoption(parser):
    parser.addoption(
        "--containers",
        action="store_true",
        help="run the container tier (tests marked containers: steps in their built images; make test-containers)",
    )


def pytest_collection_modifyitems(config, items):
    """The container tier needs the built images and minutes: `make test-containers` runs it, `make test` not."""
    if config.getoption("--containers"):
        return
    kept = [item for item in items if "containers" not in item.keywords]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if "containers" in item.keywords])
        items[:] = kept
