"""bench/scale.py (run by hand, ~15 min) runs its generator and real CLI steps at a tiny size, so it cannot rot."""

from __future__ import annotations

import json

from PIL import Image

from bench import scale


def test_scale_bench_generates_and_measures_a_step_at_both_sizes(tmp_path, capsys):
    out = tmp_path / "scale"
    argv = ["--out", str(out), "--classes", "3", "--shots", "1", "--test-per-class", "1", "--distinct", "2"]
    assert scale.main([*argv, "--width", "50", "--height", "40", "--steps", "ingest", "sample-splits"]) == 0
    for name, factor in scale.SIZES:
        assert len(list((out / name / "images").rglob("*.jpg"))) == 3 * 2 * factor  # train + test per class
    with Image.open(next((out / "4N" / "images").rglob("*.jpg"))) as image:
        assert (image.format, image.size) == ("JPEG", (50, 40))
    results = json.loads((out / "results.current.json").read_text())
    for step in ("ingest", "sample-splits"):
        n, big = results[step]["N"], results[step]["4N"]
        assert n["images"] == 6 and big["images"] == 24
        assert n["seconds"] > 0 and n["rss_mb"] > 20 and big["images_per_s"] > 0
    manifest = json.loads((out / "4N" / "splits" / "manifest.json").read_text())
    assert manifest["sets"]["train"]["rows"] == 3 * 4  # 4N takes 4x the shots
    printed = capsys.readouterr().out
    assert "| sample-splits |" in printed and "RSS 4N/N" in printed
