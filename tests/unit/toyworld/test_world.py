"""The toy world: deterministic generation, full class/domain coverage, the shipped checkpoint and its checksum."""

import io
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from clipcite.data.table import read_classes, read_table
from clipcite.model.clip import load_model
from clipcite.model.identity import resolve_checkpoint
from clipcite.toyworld.generate import write_world
from clipcite.toyworld.world import (
    BENCHMARK_DESIGNS,
    BENCHMARK_RADIUS,
    DOMAINS,
    PLAIN,
    classnames,
    iter_rows,
    render,
    shape_mask,
)
from clipcite.toyworld.zeroshot import ARCH, CHECKPOINT, main, zeroshot_accuracy


def test_generation_is_deterministic_and_seeded():
    a = list(iter_rows(3, {"train": 2}, ("photo", "sketch")))
    b = list(iter_rows(3, {"train": 2}, ("photo", "sketch")))
    c = list(iter_rows(4, {"train": 2}, ("photo", "sketch")))
    assert [r["image"] for r in a] == [r["image"] for r in b]
    assert sum(x["image"] != y["image"] for x, y in zip(a, c, strict=True)) == len(a)


def test_benchmark_draws_shapes_its_own_way_and_the_corpus_plain():
    squat = shape_mask("circle", 0, 0, 0.5, 0.0, design=BENCHMARK_DESIGNS["circle"])
    plain = shape_mask("circle", 0, 0, 0.5, 0.0)
    assert squat.sum() == pytest.approx(plain.sum() * BENCHMARK_DESIGNS["circle"][1], rel=0.03)
    assert (squat & ~plain).sum() == 0  # a squatter circle inside the plain one
    assert set(BENCHMARK_DESIGNS) == {name.split()[1] for name in classnames()}
    assert PLAIN not in BENCHMARK_DESIGNS.values()
    row = next(iter_rows(5, {"test": 1}, ("photo",)))
    shape = row["classname"].split()[1]
    stored = np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB"))
    # the same generator (seed, split, domain, label) draws the table's image only with the benchmark's design
    designed = render(
        row["classname"], "photo", np.random.default_rng([5, 2, 0, 0]), BENCHMARK_RADIUS, BENCHMARK_DESIGNS[shape]
    )
    corpus_style = render(row["classname"], "photo", np.random.default_rng([5, 2, 0, 0]), BENCHMARK_RADIUS)
    assert np.array_equal(designed, stored) and not np.array_equal(corpus_style, stored)


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


def test_zero_shot_accuracy_is_clearly_above_chance_and_far_from_perfect():
    result = zeroshot_accuracy(per_class=4)  # a seeded sample: 4 test images per class and domain
    chance = 100 / 48
    assert 40 <= result["photo"]["all"] <= 80
    for domain in DOMAINS:
        assert result[domain]["all"] > 10 * chance, domain
    shifted = [d for d in DOMAINS if d != "photo"]
    assert len(shifted) == len(DOMAINS) - 1 >= 3
    for domain in shifted:
        assert result[domain]["all"] < result["photo"]["all"], f"{domain} is not harder than photo"


def progress_bars(stderr: str) -> list[str]:
    """The description of each progress bar tqdm drew on ``stderr``: a bar starts where a line shows 0 done."""
    starts, previous = [], None
    for line in re.split(r"[\r\n]", stderr):
        bar = re.match(r"(.*?):\s+\d+%\|.*?\| (\d+)/(\d+)", line)
        if not bar:
            continue
        desc, done, total = bar.groups()
        if done == "0" and previous != (desc, "0", total):
            starts.append(desc)
        previous = (desc, done, total)
    return starts


def test_zeroshot_draws_one_progress_bar_for_the_whole_job(capsys):
    assert main(["--per-class", "1"]) == 0
    captured = capsys.readouterr()
    assert progress_bars(captured.err) == ["zero-shot"]  # not one per domain and set (12)
    assert len([line for line in captured.out.splitlines() if line.split()[0] in DOMAINS]) == len(DOMAINS)
