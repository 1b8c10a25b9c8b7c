"""Scale benchmark: does every step stay linear in time and flat in memory as the data grows 4x?

Generates an ImageNet-shaped ImageFolder (``train/`` and ``test/``, 1,000 classes, 500x375 photo-like JPEGs of
~80 KB from bench/synthetic.py) at two sizes, N and 4N, and runs the real CLI on each: ``clipcite ingest``,
``sample-splits`` (few-shot protocol), ``cache-teacher``, ``finetune`` (the tiny ``toyclip`` model, ``--epochs``)
and ``evaluate`` (zero-shot and fine-tuned). Each step is a fresh subprocess: its wall time, its peak RSS
(``os.wait4``'s ``ru_maxrss``: the step and any DataLoader workers it waited for) and images/s. The 4x growth is
4x the table (sample-splits), 4x the train split (shots N: ``--shots``, 4N: 4 x ``--shots``; cache-teacher,
finetune) and 4x the eval set (``--test-per-class``; evaluate). Targets: time ratio <= 4.4, RSS ratio <= 1.1.

To keep the whole bench near 20 min on 2 cores, ``--distinct`` JPEGs are encoded and reused across the files (the
bytes and decode cost are those of real photos; the pixels repeat). ``--code DIR`` runs the steps with
``PYTHONPATH=DIR`` (an older checkout, e.g. ``git worktree add /tmp/old <commit>``) on the data and models the last
run left in ``--out``, for before/after numbers::

    nice python -m bench.scale --out runs/scale          # 11 min (load 4) to 21 min (load 7-13) on 2 shared cores; 5 GB
    nice python -m bench.scale --out runs/scale --code /tmp/old --steps sample-splits evaluate --label before
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from bench.synthetic import jpeg_bytes  # noqa: E402

STEPS = ("ingest", "sample-splits", "cache-teacher", "finetune", "evaluate")
SIZES = (("N", 1), ("4N", 4))
INGEST = ["--layout", "split/class", "--dataset", "scale", "--verify", "header"]


def jpeg_pool(count: int, width: int, height: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct photo-like JPEGs (bench/synthetic.py: ~80 KB at 500x375)."""
    rng = np.random.default_rng(seed)
    return [jpeg_bytes(rng, width, height) for _ in range(count)]


def generate(root: Path, classes: int, per_split: dict[str, int], pool: list[bytes]) -> dict:
    """An ImageFolder ``root/<split>/class_NNNN/<i>.jpg`` with ``per_split[split]`` images per class."""
    count = size = 0
    for split, per_class in per_split.items():
        for c in range(classes):
            folder = root / split / f"class_{c:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                data = pool[(count * 7919) % len(pool)]
                (folder / f"{split}_{c:04d}_{i:03d}.jpg").write_bytes(data)
                count += 1
                size += len(data)
    return {"images": count, "bytes": size}


def step_commands(work: Path, shots: int, epochs: int) -> dict[str, list[str]]:
    settings = [
        "--config",
        "default",
        "--set",
        "device=cpu",
        "--set",
        "splits.protocol=fewshot",
        "--set",
        "splits.train_domains=[]",
        "--set",
        f"splits.shots={shots}",
        "--set",
        f"train.epochs={epochs}",
    ]
    w, s = str(work), settings
    return {
        "ingest": ["ingest", "imagefolder", "--root", f"{w}/images", "--out", f"{w}/table", *INGEST],
        "sample-splits": ["sample-splits", "--table", f"{w}/table", "--out", f"{w}/splits", *settings],
        "cache-teacher": ["cache-teacher", "--splits", f"{w}/splits", "--out", f"{w}/teacher", *settings],
        "finetune": ["finetune", "--splits", f"{w}/splits", "--cache", f"{w}/teacher", "--out", f"{w}/model", *s],
        "evaluate": ["evaluate", "--model", f"{w}/model", "--splits", f"{w}/splits", "--out", f"{w}/eval", *settings],
    }


def images_of(step: str, work: Path, epochs: int) -> int:
    """The images a step touches: table rows, train images x epochs, eval images x 2 models."""
    if step in ("ingest", "sample-splits"):
        return sum(1 for _ in (work / "images").rglob("*.jpg"))
    from clipcite.records import SplitsManifest

    manifest = SplitsManifest.read(work / "splits")
    if step in ("cache-teacher", "finetune"):
        return manifest.sets["train"].rows * epochs
    return 2 * sum(v.rows for k, v in manifest.sets.items() if k.startswith("eval/"))


def run_step(args: list[str], log: Path, code: str = "") -> dict:
    """One step in a fresh process: wall seconds, peak RSS (MB) from ``os.wait4``; its output goes to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if code:
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    console = Path(sys.executable).with_name("clipcite")  # the installed `clipcite` command
    program = [str(console), *args] if console.is_file() else [sys.executable, "-m", "clipcite.cli", *args]
    with open(log, "w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(program, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{' '.join(args[:1])} failed ({process.returncode}); see {log}")
    return {"seconds": seconds, "rss_mb": usage.ru_maxrss / 1024}


def prepare(out: Path, args: argparse.Namespace) -> None:
    """Both sizes' ImageFolders (4N's files are N's plus more), written once per ``--out``."""
    marker = out / "generated.json"
    settings = {k: getattr(args, k) for k in ("classes", "shots", "test_per_class", "width", "height", "distinct")}
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    pool = jpeg_pool(args.distinct, args.width, args.height)
    for name, factor in SIZES:
        per_split = {"train": args.shots * factor, "test": args.test_per_class * factor}
        info = generate(out / name / "images", args.classes, per_split, pool)
        print(f"{name}: {info['images']} images, {info['bytes'] / 2**20:.0f} MB", flush=True)
    print(f"generated in {time.perf_counter() - started:.0f} s", flush=True)
    marker.write_text(json.dumps(settings))


def bench(out: Path, args: argparse.Namespace) -> dict:
    results: dict = {}
    for name, factor in SIZES:
        work = out / name
        commands = step_commands(work, args.shots * factor, args.epochs)
        for step in args.steps:
            target = work / {"ingest": "table", "sample-splits": "splits", "cache-teacher": "teacher"}.get(
                step, "model" if step == "finetune" else "eval"
            )
            shutil.rmtree(target, ignore_errors=True)
            shutil.rmtree(work / "model.checkpoints", ignore_errors=True)
            measured = run_step(commands[step], work / f"{step}.{args.label}.log", args.code)
            measured["images"] = images_of(step, work, args.epochs)
            measured["images_per_s"] = measured["images"] / measured["seconds"]
            results.setdefault(step, {})[name] = measured
            print(f"{name:>2} {step:<13} {measured['seconds']:7.1f} s {measured['rss_mb']:7.0f} MB", flush=True)
    return results


def table(results: dict) -> str:
    lines = [
        "| step | N s | N peak RSS MB | N img/s | 4N s | 4N peak RSS MB | 4N img/s | time 4N/N | RSS 4N/N |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for step, by_size in results.items():
        n, big = by_size["N"], by_size["4N"]
        lines.append(
            f"| {step} | {n['seconds']:.1f} | {n['rss_mb']:.0f} | {n['images_per_s']:.0f} | {big['seconds']:.1f} | "
            f"{big['rss_mb']:.0f} | {big['images_per_s']:.0f} | {big['seconds'] / n['seconds']:.2f} | "
            f"{big['rss_mb'] / n['rss_mb']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/scale")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--shots", type=int, default=4, help="train images per class at N (4N: 4x)")
    parser.add_argument("--test-per-class", type=int, default=1, help="test images per class at N (4N: 4x)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--distinct", type=int, default=500, help="distinct JPEGs encoded and reused")
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    parser.add_argument("--code", default="", help="run the steps with PYTHONPATH=CODE (an older checkout)")
    parser.add_argument("--label", default="current", help="names the step logs and results file")
    args = parser.parse_args(argv)
    out = Path(args.out)
    started = time.perf_counter()
    prepare(out, args)
    results = bench(out, args)
    (out / f"results.{args.label}.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"total {time.perf_counter() - started:.0f} s (load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
