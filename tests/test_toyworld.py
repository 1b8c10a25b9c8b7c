"""The toy world: deterministic generation, full class/domain coverage, the shipped checkpoint and its checksum."""

import shutil

import pytest

from clipcite.data.table import read_classes, read_table
from clipcite.models import load_model, resolve_checkpoint
from clipcite.toyworld.generate import write_world
from clipcite.toyworld.world import DOMAINS, classnames, iter_rows
from clipcite.toyworld.zeroshot import ARCH, CHECKPOINT, zeroshot_accuracy


def test_generation_is_deterministic_and_seeded():
    a = list(iter_rows(3, {"train": 2}, ("photo", "sketch")))
    b = list(iter_rows(3, {"train": 2}, ("photo", "sketch")))
    c = list(iter_rows(4, {"train": 2}, ("photo", "sketch")))
    assert [r["image"] for r in a] == [r["image"] for r in b]
    assert sum(x["image"] != y["image"] for x, y in zip(a, c, strict=True)) == len(a)


def test_table_covers_every_class_domain_and_split(tmp_path):
    write_world(str(tmp_path / "t"), seed=1, counts={"train": 2, "val": 1, "test": 1})
    rows = read_table(str(tmp_path / "t"), columns=["id", "label", "classname", "domain", "split"]).to_pylist()
    assert len(classnames()) >= 40 and len(DOMAINS) >= 4
    assert len({r["id"] for r in rows}) == len(rows) == len(classnames()) * len(DOMAINS) * 4
    for split, count in (("train", 2), ("val", 1), ("test", 1)):
        for domain in DOMAINS:
            labels = [r["label"] for r in rows if r["split"] == split and r["domain"] == domain]
            assert sorted(set(labels)) == list(range(48)) and len(labels) == 48 * count
    classes = read_classes(str(tmp_path / "t"))
    assert classes.names == tuple(classnames()) and classes.template == "a photo of a {}."
    assert all(classes.names[r["label"]] == r["classname"] for r in rows)


def test_shipped_checkpoint_is_verified_on_load(tmp_path):
    shipped = resolve_checkpoint(CHECKPOINT)
    recorded = shipped.with_name(shipped.name + ".sha256").read_text().split()[0]
    assert load_model(ARCH, CHECKPOINT).identity == f"sha256:{recorded}"
    copy = tmp_path / shipped.name
    shutil.copy(shipped, copy)
    shutil.copy(shipped.with_name(shipped.name + ".sha256"), tmp_path)
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last weight
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the recorded"):
        load_model(ARCH, str(copy))
    assert shipped.stat().st_size <= 25 * 1024 * 1024


def test_zero_shot_accuracy_is_clearly_above_chance():
    result = zeroshot_accuracy(per_class=4, domains=("photo", "sketch"))
    chance = 100 / 48
    assert result["photo"]["all"] > 8 * chance
    assert result["sketch"]["all"] > 3 * chance
