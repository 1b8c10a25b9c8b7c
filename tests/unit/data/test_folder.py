"""Folder sources (clipcite/data/folder.py): the layout told from the image paths, and the errors for images at
mixed depths and for a folder that is neither an image table nor a tree of images."""

import pytest

from clipcite.data.folder import detect_layout, scan_folder, source_snapshot
from tests.support.image_folders import drop_images


def test_layout_detection_and_errors(tmp_path):
    assert detect_layout(["train/cat/1.jpg", "test/dog/2.jpg"], "x") == "split/class"
    assert detect_layout(["sketch/cat/1.jpg"], "x") == "domain/class"
    assert detect_layout(["cat/1.jpg"], "x") == "class"
    assert detect_layout(["train/sketch/cat/1.jpg"], "x") == "split/domain/class"
    with pytest.raises(ValueError, match="images at different depths"):
        detect_layout(["cat/1.jpg", "train/cat/2.jpg"], "x")
    with pytest.raises(FileNotFoundError, match="neither an image table"):
        source_snapshot(str(tmp_path))
    drop_images(tmp_path, "red circle", "train", 0, 2)
    entries, classes = scan_folder(str(tmp_path))
    assert classes.names == ("red circle",) and {e.split for e in entries} == {"train"}
