"""One rule for class folder names: ingest and the pipeline's folder source agree."""

from __future__ import annotations

import numpy as np
from PIL import Image

from clipcite.data.folder import scan_folder
from clipcite.data.ingest import ingest_imagefolder
from clipcite.data.table import read_classes, read_table


def _tree(root):
    for split in ("train", "test"):
        for folder in ("blue_circle", "red_star", "apple"):
            (root / split / folder).mkdir(parents=True)
            pixels = np.full((8, 8, 3), len(folder) * 10, dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / folder / "1.png")
    return root


def test_ingest_and_folder_source_give_the_same_classes_and_labels(tmp_path):
    root = _tree(tmp_path / "images")
    ingest_imagefolder(str(root), str(tmp_path / "table"), layout="split/class")
    ingested = read_classes(str(tmp_path / "table"))
    rows = read_table(str(tmp_path / "table"), columns=["id", "label", "classname"]).to_pylist()

    entries, classes = scan_folder(str(root))
    # labels follow the sorted folder names; underscores become spaces in classes.json, prompts and labels
    assert ingested.names == classes.names == ("apple", "blue circle", "red star")
    assert sorted((r["id"], r["label"], r["classname"]) for r in rows) == sorted(
        (e.id, e.label, e.classname) for e in entries
    )
    assert {r["classname"] for r in rows} == {"apple", "blue circle", "red star"}
