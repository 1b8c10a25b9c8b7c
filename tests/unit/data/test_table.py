"""Image tables and the ImageFolder converter: layouts, sharding, bad images, bad Parquet, atomic output."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from clipcite.data.images import ImageDecodeError
from clipcite.data.ingest import ingest_imagefolder
from clipcite.data.table import ClassList, read_classes, read_table, write_table


def png(colour=(200, 10, 10), size=(20, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def tree(root, files: dict[str, bytes]):
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_class_layout_keeps_original_bytes_and_sorted_labels(tmp_path):
    data = png()
    root = tree(
        tmp_path / "src",
        {"zebra/1.png": data, "apple/2.png": png((0, 0, 255)), "apple/.hidden.png": data, "apple/notes.txt": b"x"},
    )
    counts = ingest_imagefolder(str(root), str(tmp_path / "t"), dataset="fruit")
    assert counts == {"rows": 2, "shards": 1, "classes": 2, "skipped": 0}
    rows = {r["id"]: r for r in read_table(str(tmp_path / "t")).to_pylist()}
    assert rows["zebra/1.png"]["image"] == data
    assert (rows["apple/2.png"]["label"], rows["zebra/1.png"]["label"]) == (0, 1)
    assert rows["apple/2.png"]["split"] == "train" and rows["apple/2.png"]["domain"] == "default"
    assert read_classes(str(tmp_path / "t")).names == ("apple", "zebra")


def test_domain_class_layout_takes_the_domain_from_the_folder_and_labels_by_class(tmp_path):
    root = tree(tmp_path / "src", {"sketch/cat/1.png": png(), "photo/cat/1.png": png(), "photo/dog/1.png": png()})
    ingest_imagefolder(str(root), str(tmp_path / "t"), layout="domain/class", split="test")
    rows = read_table(str(tmp_path / "t")).to_pylist()
    assert sorted((r["domain"], r["classname"], r["label"], r["split"]) for r in rows) == [
        ("photo", "cat", 0, "test"),
        ("photo", "dog", 1, "test"),
        ("sketch", "cat", 0, "test"),
    ]


def test_large_tables_are_sharded_and_read_back_whole(tmp_path):
    rows = [
        {"id": str(i), "image": png(), "label": 0, "classname": "a", "domain": "d", "split": "train"} for i in range(10)
    ]
    counts = write_table(rows, str(tmp_path / "t"), ClassList(("a",)), shard_bytes=2 * len(png()))
    assert counts["shards"] == 5
    assert [r["id"] for r in read_table(str(tmp_path / "t")).to_pylist()] == [str(i) for i in range(10)]


def test_corrupt_image_names_the_file_and_leaves_nothing_behind(tmp_path):
    root = tree(tmp_path / "src", {"cat/good.png": png(), "cat/bad.png": png()[:40], "dog/ok.png": png()})
    out = tmp_path / "t"
    with pytest.raises(ImageDecodeError, match=r"cat/bad.png: corrupt or unreadable image.*--skip-bad-images"):
        ingest_imagefolder(str(root), str(out))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no staging folder left either


def test_skip_bad_images_skips_and_counts(tmp_path):
    root = tree(tmp_path / "src", {"cat/good.png": png(), "cat/bad.png": b"not an image", "dog/ok.png": png()})
    counts = ingest_imagefolder(str(root), str(tmp_path / "t"), skip_bad_images=True)
    assert counts["skipped"] == 1 and counts["rows"] == 2


def test_failed_rewrite_keeps_the_previous_table(tmp_path):
    out = tmp_path / "t"
    tree(tmp_path / "a", {"cat/1.png": png()})
    ingest_imagefolder(str(tmp_path / "a"), str(out))
    before = sorted(p.name for p in out.iterdir())
    tree(tmp_path / "b", {"cat/1.png": b"broken"})
    with pytest.raises(ImageDecodeError):
        ingest_imagefolder(str(tmp_path / "b"), str(out))
    assert sorted(p.name for p in out.iterdir()) == before
    assert len(read_table(str(out))) == 1


def test_parquet_missing_a_column_names_the_file_and_column(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    pq.write_table(
        pa.table({"id": ["1"], "image": [png()], "classname": ["a"], "domain": ["d"], "split": ["x"]}),
        folder / "part-00000.parquet",
    )
    (folder / "classes.json").write_text(json.dumps({"classnames": ["a"]}))
    with pytest.raises(ValueError, match=r"part-00000.parquet: Parquet file is missing column\(s\) label"):
        read_table(str(folder))


def test_rows_may_point_at_files_instead_of_bytes(tmp_path):
    (tmp_path / "img.png").write_bytes(png())
    rows = [
        {"id": "1", "path": str(tmp_path / "img.png"), "label": 0, "classname": "a", "domain": "d", "split": "train"}
    ]
    write_table(rows, str(tmp_path / "t"), ClassList(("a",)))
    from clipcite.data.crops import model_input
    from clipcite.data.loading import EvalDataset

    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    cfg = {"size": 8, "mean": mean, "std": std}
    dataset = EvalDataset(read_table(str(tmp_path / "t")).to_pylist(), cfg)
    index, pixels, label = dataset[0]
    assert (index, pixels.shape, pixels.dtype, label) == (0, (3, 8, 8), torch.uint8, 0)
    images = model_input(pixels[None], cfg, "cpu")[0]
    # png() is one flat colour, so every pixel of each channel is (colour / 255 - mean) / std, in RGB order
    for channel, value in enumerate((200, 10, 10)):
        assert torch.equal(pixels[channel], torch.full((8, 8), value, dtype=torch.uint8)), channel
        expected = (value / 255 - mean[channel]) / std[channel]
        assert torch.allclose(images[channel], torch.full((8, 8), expected), atol=1e-6), channel


def test_an_unknown_verify_mode_is_refused_not_taken_for_none():
    from clipcite.data.images import check_image

    with pytest.raises(ValueError, match="verify must be one of"):
        check_image(b"not read", "x.png", "headers")
