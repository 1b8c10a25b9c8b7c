"""How the toy world's fine-tuning recipe was chosen: plain ``ce`` on base-class *validation* accuracy.

    python -m bench.toyworld_lr --out runs/lr
    python -m bench.toyworld_lr --out runs/lr --smoke    # seconds, a tiny world, one lr and crop: every path runs

The recipe (learning rate, crop scale) is picked for the baseline, not for CLIP-CITE, and then used for every
method in bench/toyworld_methods.py. Test sets are never looked at here.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from pathlib import Path

from bench.smoke import SMOKE_COUNTS, SMOKE_HELP, SMOKE_OVERRIDES
from clipcite.config import load_config
from clipcite.data.prompts import prompts_for
from clipcite.evaluation.metrics import top1
from clipcite.evaluation.predict import predict
from clipcite.model.clip import load_model, load_saved
from clipcite.steps import finetune, sample_splits
from clipcite.steps.artifact_io import read_split
from clipcite.steps.command_line import add_overrides_argument
from clipcite.toyworld.generate import write_world

# torchvision's RandomResizedCrop defaults, and square near-full crops (aspect jitter squashes a square into a
# bar-like shape and a circle into an ellipse; small crops miss the object): the world's classes depend on both.
CROPS = {
    "rrc-default": ["train.crop_scale=[0.08, 1.0]", "train.crop_ratio=[0.75, 1.3333333333333333]"],
    "square-0.9": ["train.crop_scale=[0.9, 1.0]", "train.crop_ratio=[1.0, 1.0]"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/lr", help="folder for the table, splits and models")
    parser.add_argument("--lr", type=float, nargs="+", default=[3e-5, 1e-4, 3e-4, 1e-3], help="learning rates")
    add_overrides_argument(parser)
    parser.add_argument("--crops", nargs="+", default=list(CROPS), choices=list(CROPS), help="crop settings")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_HELP}; the first lr and crop setting only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.smoke:
        args.lr, args.crops = args.lr[:1], args.crops[:1]
    out = Path(args.out)
    # always rewritten (seconds): a table left by an older version of the world would silently skew the numbers
    write_world(str(out / "table"), seed=1, counts=SMOKE_COUNTS if args.smoke else None)
    smoke = SMOKE_OVERRIDES if args.smoke else []
    base = [*args.overrides, "device=cpu", "train.method=ce", "train.alpha=1.0", "teacher.mode=online"]
    base += ["splits.val_shots=8", *smoke]
    sample_splits.run(str(out / "table"), str(out / "splits"), load_config("default", base))
    rows, classes = read_split(str(out / "splits" / "val"))
    prompts = prompts_for(classes.template, classes.names)
    spec = load_config("default", [*args.overrides, *smoke]).model
    zeroshot = load_model(spec.arch, spec.pretrained)
    pred, target = predict(zeroshot, rows, prompts)
    print(f"val images: {len(rows)}; zero-shot base val top-1: {top1(pred, target):.1f}")
    print(f"{'lr':>8} {'crops':>12} {'val top-1':>9} {'seconds':>7}")
    for lr, crops in itertools.product(args.lr, args.crops):
        config = load_config("default", [*base, f"train.lr={lr}", *CROPS[crops]])
        started = time.perf_counter()
        model_dir = out / f"ce-{lr}-{crops}"
        finetune.run(str(out / "splits"), str(model_dir), config)
        loaded, _ = load_saved(model_dir)
        pred, target = predict(loaded, rows, prompts)
        print(f"{lr:8.0e} {crops:>12} {top1(pred, target):9.1f} {time.perf_counter() - started:7.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
