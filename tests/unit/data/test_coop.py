"""CoOp layouts (docs/data.md) on small fabricated trees: splits, labels, class names, templates."""

import io
import json

import pytest
from PIL import Image

from clipcite.data.coop import scan_coop
from clipcite.data.ingest import ingest_coop
from clipcite.data.prompts import format_prompt
from clipcite.data.table import read_classes, read_table


def jpg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "JPEG")
    return buf.getvalue()


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpg())


def test_split_file_dataset_gives_coop_splits_labels_and_template(tmp_path):
    folder = tmp_path / "oxford_pets"
    split = {
        "train": [["Abyssinian_1.jpg", 0, "abyssinian"], ["american_bulldog_1.jpg", 1, "american_bulldog"]],
        "val": [["Abyssinian_2.jpg", 0, "abyssinian"]],
        "test": [["american_bulldog_2.jpg", 1, "american_bulldog"]],
    }
    (folder / "images").mkdir(parents=True)
    (folder / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    for items in split.values():
        for rel, _, _ in items:
            touch(folder / "images" / rel)
    ingest_coop(str(tmp_path), "OxfordPets", str(tmp_path / "t"))
    rows = sorted(read_table(str(tmp_path / "t")).to_pylist(), key=lambda r: r["id"])
    assert [(r["id"], r["label"], r["split"]) for r in rows] == [
        ("oxford_pets/Abyssinian_1.jpg", 0, "train"),
        ("oxford_pets/Abyssinian_2.jpg", 0, "val"),
        ("oxford_pets/american_bulldog_1.jpg", 1, "train"),
        ("oxford_pets/american_bulldog_2.jpg", 1, "test"),
    ]
    classes = read_classes(str(tmp_path / "t"))
    assert classes.names == ("abyssinian", "american_bulldog") and classes.dataset == "oxford_pets"
    assert format_prompt(classes.template, classes.names[1]) == "a photo of a american bulldog, a type of pet."


def imagenet_classnames(folder, wnids):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} name of {w}\n" for w in wnids))


def test_imagenet_train_and_val_as_test(tmp_path):
    wnids = ["n002", "n001", "n003"]
    imagenet_classnames(tmp_path / "imagenet", sorted(wnids))
    for split in ("train", "val"):
        for w in wnids:
            touch(tmp_path / "imagenet" / "images" / split / w / f"{w}_{split}.JPEG")
    entries, names, key = scan_coop(tmp_path, "imagenet")
    assert key == "imagenet" and names == ["name of n001", "name of n002", "name of n003"]
    assert {(e.path.parent.name, e.label, e.split) for e in entries} == {
        (w, i, s) for i, w in enumerate(sorted(wnids)) for s in ("train", "test")
    }


def test_imagenetv2_integer_folders_sorted_numerically(tmp_path):
    wnids = [f"n{i:03d}" for i in range(12)]
    imagenet_classnames(tmp_path / "imagenetv2", wnids)
    image_dir = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    for i in (0, 2, 10, 11):  # "10" sorts before "2" as a string
        touch(image_dir / str(i) / "a.jpeg")
    entries, names, _ = scan_coop(tmp_path, "ImageNetV2")
    assert len(names) == 12
    assert [(e.path.parent.name, e.label, e.classname) for e in entries] == [
        ("0", 0, "name of n000"),
        ("2", 2, "name of n002"),
        ("10", 10, "name of n010"),
        ("11", 11, "name of n011"),
    ]


def test_imagenet_a_uses_its_200_class_subset_relabelled(tmp_path):
    all_wnids = [f"n{i:03d}" for i in range(10)]
    imagenet_classnames(tmp_path / "imagenet-adversarial", all_wnids)
    subset = ["n007", "n002", "n005"]
    for w in subset:
        touch(tmp_path / "imagenet-adversarial" / "imagenet-a" / w / "x.jpg")
    (tmp_path / "imagenet-adversarial" / "imagenet-a" / "README.txt").write_text("ignored")
    entries, names, _ = scan_coop(tmp_path, "imagenet-a")
    assert names == ["name of n002", "name of n005", "name of n007"]
    assert sorted((e.label, e.split) for e in entries) == [(0, "test"), (1, "test"), (2, "test")]


def test_aircraft_variant_names_with_spaces(tmp_path):
    folder = tmp_path / "fgvc_aircraft"
    folder.mkdir()
    (folder / "variants.txt").write_text("707-320\nA300B4\nCessna 172\n")
    lines = {"train": "0001 Cessna 172\n0002 707-320\n", "val": "0003 A300B4\n", "test": "0004 Cessna 172\n"}
    for split, text in lines.items():
        (folder / f"images_variant_{split}.txt").write_text(text)
        for line in text.splitlines():
            touch(folder / "images" / f"{line.split()[0]}.jpg")
    entries, names, _ = scan_coop(tmp_path, "fgvc_aircraft")
    assert names == ["707-320", "A300B4", "Cessna 172"]
    assert [(e.path.name, e.label, e.classname, e.split) for e in entries] == [
        ("0001.jpg", 2, "Cessna 172", "train"),
        ("0002.jpg", 0, "707-320", "train"),
        ("0003.jpg", 1, "A300B4", "val"),
        ("0004.jpg", 2, "Cessna 172", "test"),
    ]


def test_missing_image_and_bad_split_file_are_named(tmp_path):
    folder = tmp_path / "dtd"
    (folder / "images").mkdir(parents=True)
    (folder / "split_zhou_DescribableTextures.json").write_text(json.dumps({"train": [["a/1.jpg", 0, "banded"]]}))
    with pytest.raises(ValueError, match=r"dtd/images/a/1.jpg: cannot read file"):
        ingest_coop(str(tmp_path), "dtd", str(tmp_path / "t"))
    (folder / "split_zhou_DescribableTextures.json").write_text(json.dumps({"train": [["a/1.jpg", 0]]}))
    with pytest.raises(ValueError, match=r"split_zhou_DescribableTextures.json: train\[0\] is not a"):
        scan_coop(tmp_path, "DescribableTextures")
    with pytest.raises(ValueError, match="unknown CoOp dataset 'mnist'"):
        scan_coop(tmp_path, "mnist")
