"""A rerun with other training settings that leave the crops alone (alpha, lr, loss weights) reuses the teacher
cache by content instead of running the teacher again; what changes the crops or the teacher misses."""

from __future__ import annotations

import logging

import pytest

from clipcite import storage
from clipcite.caches import teacher_store
from clipcite.steps import cache_teacher, sample_splits
from clipcite.training.teacher_cache import TENSORS_FILE
from tests.conftest import tiny_config

BASE = ("splits.shots=2", "train.epochs=2")
RETRAIN = ("train.lr=3e-5", "train.alpha=0.3", "train.lam=0.5", "train.eta=0.2", "train.method=cite")


def _splits(table, out, *settings):
    config = tiny_config(*BASE, *settings)
    sample_splits.run(str(table), str(out), config)  # the rerun's own sample-splits, as in the pipeline
    return str(out), config


def test_rerun_with_other_training_settings_reuses_the_stored_teacher_cache(table, tmp_path, monkeypatch):
    store = str(tmp_path / "store")
    first_splits, first = _splits(table, tmp_path / "splits1")
    read_back = []
    with monkeypatch.context() as patch:  # the store is filled from the step's local files, not its output read back
        patch.setattr(storage, "local_dir", lambda uri: read_back.append(uri))
        built = cache_teacher.run(first_splits, str(tmp_path / "teacher1"), first, store=store)
    assert "reused" not in built and read_back == []

    second_splits, second = _splits(table, tmp_path / "splits2", *RETRAIN)

    def teacher_must_not_run(*args, **kwargs):
        raise AssertionError("the teacher ran again")

    monkeypatch.setattr(cache_teacher, "build_cache", teacher_must_not_run)
    reused = cache_teacher.run(second_splits, str(tmp_path / "teacher2"), second, store=store)
    assert reused["reused"] == cache_teacher.content_key(first_splits, first)
    assert {k: v for k, v in reused.items() if k != "reused"} == built
    for name in ("teacher.safetensors", "teacher.json"):
        assert (tmp_path / "teacher2" / name).read_bytes() == (tmp_path / "teacher1" / name).read_bytes()

    # what changes the crops or the teacher's outputs is another key: the teacher would run again
    for setting in ("train.crop_scale=[0.5, 1.0]", "train.epochs=3", "seed=2", "teacher.dtype=float16"):
        changed = tiny_config(*BASE, setting)
        other_splits = first_splits if setting != "seed=2" else _splits(table, tmp_path / "splits3", setting)[0]
        assert cache_teacher.content_key(other_splits, changed) != reused["reused"], setting
        with pytest.raises(AssertionError, match="ran again"):
            cache_teacher.run(other_splits, str(tmp_path / "teacher-other"), changed, store=store)


def test_a_damaged_stored_cache_is_recomputed_not_served(table, tmp_path):
    store = str(tmp_path / "store")
    splits, config = _splits(table, tmp_path / "splits")
    cache_teacher.run(splits, str(tmp_path / "teacher1"), config, store=store)
    key = cache_teacher.content_key(splits, config)
    stored = tmp_path / "store" / key / TENSORS_FILE
    stored.write_bytes(stored.read_bytes()[:100])
    assert teacher_store.restore(store, key, str(tmp_path / "teacher2")) is None
    assert not (tmp_path / "teacher2").exists()  # nothing half-written
    again = cache_teacher.run(splits, str(tmp_path / "teacher2"), config, store=store)
    assert "reused" not in again and (tmp_path / "teacher2" / TENSORS_FILE).is_file()


def test_a_store_that_cannot_be_written_costs_only_the_reuse(table, tmp_path, caplog):
    """The store saves later runs work; when it cannot be written the step still writes its own output."""
    store = tmp_path / "not-a-folder"
    store.write_text("a file where the store should be")
    splits, config = _splits(table, tmp_path / "splits")
    with caplog.at_level(logging.WARNING, logger="clipcite.caches.teacher_store"):
        built = cache_teacher.run(splits, str(tmp_path / "teacher"), config, store=str(store))
    assert "reused" not in built and (tmp_path / "teacher" / TENSORS_FILE).is_file()
    assert "could not keep the teacher cache" in caplog.text
