"""The teacher cache's worth on the real architecture: fit's CITE step time with the cached
teacher vs the online teacher, ViT-B-16-quickgelu (random init, 224 px) on CPU, side by side in one process.

    OMP_NUM_THREADS=1 python -m bench.teacher_cache            # 3 rounds x 2 timed steps per mode, batch 8

Each round times both modes one after the other (the order flips every round, so drift on a shared machine hits
both), and the teacher's image forward alone; the ratio is cached / online of the mean step times, by this
process's CPU time (one torch thread: what the step costs, whatever else the machine runs) and by wall time. The
cached step looks the teacher's image features up (``teacher.mode=cache``); the online step runs the frozen
teacher's image forward under no_grad, 35.1 of the step's ~158 GFLOPs per image, so the ratio should sit near
0.78. Both steps are bench/cite_step.py's, i.e. fit's own code on device tensors (the input path is the same in
both modes and left out).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from bench.cite_step import cite_step, input_side  # noqa: E402
from clipcite.model.clip import load_model  # noqa: E402

TARGET = 0.82


def timed(step, steps: int) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) per call of ``step``."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-16-quickgelu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per mode and round")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--smoke", action="store_true", help="seconds: the tiny model, 1 round of 1 step, batch 2")
    args = parser.parse_args(argv)
    if args.smoke:
        args.arch, args.batch, args.classes, args.rounds, args.steps = "clipcite-tiny", 2, 4, 1, 1

    student = {mode: load_model(args.arch, "", init_seed=0, device=args.device) for mode in ("cache", "online")}
    teacher = load_model(args.arch, "", init_seed=0, device=args.device)
    steps = {
        "cache": cite_step(student["cache"], args.batch, args.classes, args.device, args.precision),
        "online": cite_step(student["online"], args.batch, args.classes, args.device, args.precision, teacher=teacher),
    }
    side = input_side(teacher)
    images = torch.randn(args.batch, 3, side, side)

    @torch.no_grad()
    def teacher_forward() -> None:  # what the online step does on top of the cached one
        teacher.model.eval().encode_image(images.to(args.device), normalize=True)

    for step in steps.values():  # warm-up: allocator, first-call costs
        step()
    times: dict[str, list[tuple[float, float]]] = {"cache": [], "online": [], "teacher forward": []}
    for r in range(args.rounds):
        order = ("cache", "online") if r % 2 == 0 else ("online", "cache")
        for mode in order:
            times[mode].append(timed(steps[mode], args.steps))
        times["teacher forward"].append(timed(teacher_forward, 1))
        print(f"round {r + 1}: " + ", ".join(f"{m} {w:.2f} s wall / {c:.2f} s CPU" for m, (w, c) in
                                               ((m, times[m][-1]) for m in times)), flush=True)  # fmt: skip
    wall = {m: sum(t[0] for t in v) / len(v) for m, v in times.items()}
    cpu = {m: sum(t[1] for t in v) / len(v) for m, v in times.items()}
    ratio_wall, ratio_cpu = wall["cache"] / wall["online"], cpu["cache"] / cpu["online"]
    load = os.getloadavg()
    print(
        f"{args.arch}, random init, {args.batch} images/step, {args.precision}, {args.device}, "
        f"{torch.get_num_threads()} torch thread(s), load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n"
        f"per step, mean of {args.rounds} rounds: cached teacher {wall['cache']:.2f} s wall / {cpu['cache']:.2f} s "
        f"CPU, online teacher {wall['online']:.2f} s wall / {cpu['online']:.2f} s CPU; the teacher's image forward "
        f"alone {wall['teacher forward']:.2f} s wall / {cpu['teacher forward']:.2f} s CPU "
        f"(predicts a ratio of {1 - cpu['teacher forward'] / cpu['online']:.3f})\n"
        f"step time ratio cache/online: {ratio_cpu:.3f} by CPU time, {ratio_wall:.3f} by wall time (target <= "
        f"{TARGET}: {'met' if ratio_cpu <= TARGET else 'NOT met'} by CPU time; wall time on a shared machine "
        "carries the other processes' load)"
    )
    return {"wall": wall, "cpu": cpu, "ratio_cpu": ratio_cpu, "ratio_wall": ratio_wall}


if __name__ == "__main__":
    main()
