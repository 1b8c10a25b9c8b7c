"""The teacher cache's worth on the real architecture (issue 11 goal 5): fit's CITE step time with the cached
teacher vs the online teacher, ViT-B-16-quickgelu (random init, 224 px) on CPU, side by side in one process.

    OMP_NUM_THREADS=1 python bench/teacher_cache.py            # 3 rounds x 2 timed steps per mode, batch 8

Each round times both modes one after the other (the order flips every round, so drift on a shared machine hits
both); the ratio is cached / online of the summed step times. The cached step looks the teacher's image features
up (``teacher.mode=cache``); the online step runs the frozen teacher's image forward under no_grad, which is
35.1 of the step's ~158 GFLOPs per image, so the ratio should sit near 0.78. Both steps are bench/cite_step.py's,
i.e. fit's own code on device tensors (the input path is the same in both modes and left out).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.cite_step import cite_step  # noqa: E402
from clipcite.models import load_model  # noqa: E402

TARGET = 0.82


def timed(step, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-16-quickgelu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per mode and round")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = parser.parse_args(argv)

    student = {mode: load_model(args.arch, "", init_seed=0, device=args.device) for mode in ("cache", "online")}
    teacher = load_model(args.arch, "", init_seed=0, device=args.device)
    steps = {
        "cache": cite_step(student["cache"], args.batch, args.classes, args.device, args.precision),
        "online": cite_step(student["online"], args.batch, args.classes, args.device, args.precision, teacher=teacher),
    }
    for step in steps.values():  # warm-up: allocator, first-call costs
        step()
    times: dict[str, list[float]] = {"cache": [], "online": []}
    for r in range(args.rounds):
        order = ("cache", "online") if r % 2 == 0 else ("online", "cache")
        for mode in order:
            times[mode].append(timed(steps[mode], args.steps) / args.steps)
        print(f"round {r + 1}: " + ", ".join(f"{m} {times[m][-1]:.2f} s/step" for m in ("cache", "online")), flush=True)
    ratio = sum(times["cache"]) / sum(times["online"])
    load = os.getloadavg()
    print(
        f"{args.arch}, random init, {args.batch} images/step, {args.precision}, {args.device}, "
        f"{torch.get_num_threads()} torch thread(s), load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n"
        f"cached teacher {sum(times['cache']) / args.rounds:.2f} s/step "
        f"({args.batch * args.rounds / sum(times['cache']):.2f} images/s), online teacher "
        f"{sum(times['online']) / args.rounds:.2f} s/step ({args.batch * args.rounds / sum(times['online']):.2f} "
        f"images/s)\nstep time ratio cache/online: {ratio:.3f} (target <= {TARGET}: "
        f"{'met' if ratio <= TARGET else 'NOT met'})"
    )
    return {"times": times, "ratio": ratio}


if __name__ == "__main__":
    main()
