"""How the toy world's fine-tuning recipe was chosen: plain ``ce`` on base-class *validation* accuracy.

    python bench/toyworld_lr.py --out runs/lr

The recipe (learning rate, crop scale) is picked for the baseline, not for CLIP-CITE, and then used for every
method in bench/toyworld_methods.py. Test sets are never looked at here.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipcite.config import load_config
from clipcite.evaluate import predict
from clipcite.metrics import top1
from clipcite.models import load_model
from clipcite.prompts import prompts_for
from clipcite.steps import finetune, sample_splits
from clipcite.steps.common import split_rows
from clipcite.toyworld.generate import write_world


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/lr")
    parser.add_argument("--lr", type=float, nargs="+", default=[3e-5, 1e-4, 3e-4, 1e-3])
    parser.add_argument("--crop-min", type=float, nargs="+", default=[0.08, 0.5])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    if not (out / "table").exists():
        write_world(str(out / "table"), seed=1)
    base = ["device=cpu", "train.method=ce", "train.alpha=1.0", "teacher.mode=online", "splits.val_shots=8"]
    sample_splits.run(str(out / "table"), str(out / "splits"), load_config("default", base))
    rows, classes = split_rows(str(out / "splits" / "val"))
    prompts = prompts_for(classes.template, classes.names)
    zeroshot = load_model("toyclip", load_config("default").model.pretrained)
    pred, target = predict(zeroshot, rows, prompts)
    print(f"val images: {len(rows)}; zero-shot base val top-1: {top1(pred, target):.1f}")
    print(f"{'lr':>8} {'crop_min':>8} {'val top-1':>9} {'seconds':>7}")
    for lr, crop_min in itertools.product(args.lr, args.crop_min):
        config = load_config("default", [*base, f"train.lr={lr}", f"train.crop_scale=[{crop_min}, 1.0]"])
        started = time.perf_counter()
        model_dir = out / f"ce-{lr}-{crop_min}"
        finetune.run(str(out / "splits"), str(model_dir), config)
        from clipcite.models import load_saved

        loaded, _ = load_saved(model_dir)
        pred, target = predict(loaded, rows, prompts)
        print(f"{lr:8.0e} {crop_min:8.2f} {top1(pred, target):9.1f} {time.perf_counter() - started:7.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
