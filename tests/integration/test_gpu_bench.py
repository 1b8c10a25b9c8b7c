"""bench.gpu_bench (what bench/gpu.sh runs on a GPU machine) runs end to end on CPU with the tiny model, so the
GPU script cannot rot between the rare runs on a GPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench import gpu_bench

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_runs_on_cpu_with_the_tiny_model(tmp_path):
    out = tmp_path / "gpu.json"
    results = gpu_bench.main(["--tiny", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert [r["batch"] for r in results["train"]] == [4, 8]
    for r in results["train"]:
        assert r["images_per_s"] > 0 and r["counted_gflops_per_image"] > 0
        assert math.isclose(r["mfu"], r["images_per_s"] * gpu_bench.TRAIN_GFLOPS / 790e3)
        assert r["peak_gib"] is None  # no CUDA memory on CPU
    e = results["eval"]
    assert e["tensors_images_per_s"] > 0 and e["real_path_images_per_s"] > 0 and e["input_path_alone_images_per_s"] > 0
    assert e["images"] == 48 and e["batch"] == 16 and e["normalisation_identical_to_cpu"] is True


def test_gpu_script_runs_the_bench_with_bounded_time():
    script = (ROOT / "bench" / "gpu.sh").read_text()
    assert "bench.gpu_bench" in script and "timeout 470" in script  # under the 8 minutes it is given
    defaults = gpu_bench.parse([])
    assert (defaults.arch, defaults.precision, defaults.train_batches, defaults.eval_batch) == (
        "ViT-B-16-quickgelu",
        "bf16",
        [32, 64, 128],
        256,
    )
