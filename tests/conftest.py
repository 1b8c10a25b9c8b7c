"""Shared fixtures: a generated ImageFolder, its table, and the tiny random-weight open_clip model."""

from __future__ import annotations

import logging

import pytest

from clipcite.config import load_config
from clipcite.data.ingest import ingest_imagefolder
from clipcite.demo import make_imagefolder
from clipcite.models import load_model

TINY = ["model.arch=clipcite-tiny", "model.pretrained=", "device=cpu"]


@pytest.fixture(autouse=True)
def _quiet_open_clip():
    logging.getLogger().setLevel(logging.ERROR)


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


@pytest.fixture
def tiny():
    return load_model("clipcite-tiny", "", init_seed=0)


def tiny_config(*overrides: str):
    return load_config(overrides=[*TINY, *overrides])
