"""The validation split (``splits.val_shots``): from the data's val split, else from the train images beyond the K
shots, never from test; base classes only under base-to-new; the train and eval sets unchanged by it."""

import hashlib
from pathlib import Path

import pytest

from clipcite.config import ConfigError, load_config
from clipcite.data.splits import NotEnoughShotsError, sample_few_shot, val_shots
from clipcite.data.table import read_table
from clipcite.steps import sample_splits
from clipcite.toyworld.generate import write_world

IDS = [f"img{i:03d}" for i in range(60)]
LABELS = [i % 5 for i in range(60)]  # 12 images per class
TINY = ["model.arch=clipcite-tiny", "model.pretrained=", "splits.shots=2", "splits.train_domains=[photo]"]
# The ids digests sample-splits wrote for this data before the validation split changed (commit cbfc91f):
# a change to how validation is drawn must leave the train and eval sets as they were.
BEFORE = {
    "base2new": {
        "train": "e1e3e1d191b72e82",
        "eval/photo-base": "994e23a29a995691",
        "eval/photo-new": "9d135519593ffe10",
        "eval/sketch-base": "8df14d57dccc06f5",
        "eval/sketch-new": "bf6e562d21cf702e",
    },
    "fewshot": {"train": "c072b2dae23050f3", "eval/photo": "0ab70ddfdd0a4cc8", "eval/sketch": "f651ca6dffc7ee42"},
}


def test_held_out_images_follow_the_training_shots_in_rank_order():
    train = sample_few_shot(IDS, LABELS, 4, seed=1)
    held = sample_few_shot(IDS, LABELS, 3, seed=1, skip=4)
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(sample_few_shot(IDS, LABELS, 7, seed=1))  # the next 3 in rank order
    assert held == sample_few_shot(IDS, LABELS, 3, seed=1, skip=4)
    with pytest.raises(
        NotEnoughShotsError, match=r"has 2 .* beyond the 10 training shots, fewer than splits.val_shots=4"
    ):
        sample_few_shot(IDS, LABELS, 4, seed=1, skip=10, flag="splits.val_shots")


def test_val_shots_defaults_to_k_and_a_negative_value_is_named():
    assert [val_shots(k) for k in (1, 4, 16)] == [1, 4, 16]
    assert val_shots(16, 4) == 4
    with pytest.raises(ConfigError, match="splits: val_shots must be >= 0"):
        load_config(None, ["splits.val_shots=-1"])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(str(out / "with_val"), seed=1, counts={"train": 5, "val": 2, "test": 2}, domains=("photo", "sketch"))
    write_world(str(out / "no_val"), seed=1, counts={"train": 5, "val": 0, "test": 2}, domains=("photo", "sketch"))
    return out


def _files(folder: Path, *prefixes: str) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file() and str(f.relative_to(folder)).startswith(prefixes)
    }


@pytest.mark.parametrize("protocol", ["base2new", "fewshot"])
def test_train_and_eval_sets_are_todays_whatever_validation_takes(world, tmp_path, protocol):
    outputs = {}
    for name, table, extra in (
        ("default", "with_val", []),
        ("one", "with_val", ["splits.val_shots=1"]),
        ("from_train", "no_val", []),
    ):
        config = load_config(None, [*TINY, f"splits.protocol={protocol}", *extra])
        manifest = sample_splits.run(str(world / table), str(tmp_path / name), config)
        ids = {k: v.ids_sha256[:16] for k, v in manifest.sets.items() if k != "val"}
        if table == "with_val":
            assert ids == BEFORE[protocol]
        outputs[name] = _files(tmp_path / name, "train", "eval")
    assert outputs["default"] == outputs["one"]  # byte for byte: validation's size does not touch them
    if protocol == "fewshot":  # the no-val table has the same train and test images
        assert outputs["default"] == outputs["from_train"]


def _val(folder: Path):
    return read_table(str(folder / "val"), columns=["id", "label", "split", "domain"]).to_pylist()


def test_validation_comes_from_the_val_split_for_the_trained_classes_only(world, tmp_path):
    manifest = sample_splits.run(str(world / "with_val"), str(tmp_path / "s"), load_config(None, TINY))
    rows = _val(tmp_path / "s")
    base = len(manifest.train_classes)  # base-to-new: 24 of the 48 classes are trained
    assert manifest.val_source == "val" and manifest.val_shots == 2
    assert {r["split"] for r in rows} == {"val"} and {r["domain"] for r in rows} == {"photo"}
    assert sorted({r["label"] for r in rows}) == list(range(base))  # relabelled base classes, none of the new
    assert len(rows) == 2 * base
    assert (
        manifest.sets["val"].ids_sha256 == hashlib.sha256("\n".join(sorted(r["id"] for r in rows)).encode()).hexdigest()
    )


def test_without_a_val_split_validation_takes_the_train_images_beyond_the_shots(world, tmp_path):
    config = load_config(None, [*TINY, "splits.val_shots=3"])
    first = sample_splits.run(str(world / "no_val"), str(tmp_path / "a"), config)
    again = sample_splits.run(str(world / "no_val"), str(tmp_path / "b"), config)
    rows = _val(tmp_path / "a")
    train = {r["id"] for r in read_table(str(tmp_path / "a" / "train"), columns=["id"]).to_pylist()}
    assert first.val_source == "train" and {r["split"] for r in rows} == {"train"}  # never test
    assert not train & {r["id"] for r in rows}
    assert len(rows) == 3 * len(first.train_classes)
    assert again.sets["val"] == first.sets["val"]  # deterministic from the seed
    other = sample_splits.run(str(world / "no_val"), str(tmp_path / "c"), load_config(None, [*TINY, "seed=2"]))
    assert other.sets["val"].ids_sha256 != first.sets["val"].ids_sha256


def test_an_explicit_val_shots_the_data_cannot_fill_names_the_setting(world, tmp_path):
    with pytest.raises(NotEnoughShotsError, match=r"2 'val' image\(s\), fewer than splits.val_shots=3"):
        sample_splits.run(
            str(world / "with_val"), str(tmp_path / "a"), load_config(None, [*TINY, "splits.val_shots=3"])
        )
    with pytest.raises(NotEnoughShotsError, match=r"beyond the 2 training shots, fewer than splits.val_shots=4"):
        sample_splits.run(str(world / "no_val"), str(tmp_path / "b"), load_config(None, [*TINY, "splits.val_shots=4"]))
    # the default (0 = K) takes what there is: 1 image beyond the 4 shots of a class with 5
    config = load_config(None, [*TINY, "splits.shots=4"])
    manifest = sample_splits.run(str(world / "no_val"), str(tmp_path / "c"), config)
    assert manifest.sets["val"].rows == 1 * len(manifest.train_classes)
