"""Peer bench: clipcite's ``flyp`` against open_clip's own trainer, ``open_clip_train``, on one split (run by hand).

    python -m bench.peer_open_clip_train --out runs/peer             # 3 seeds + 2 speed rounds: 12 min, 5 min CPU
    python -m bench.peer_open_clip_train --out runs/peer --seeds 1   # one seed: a fast look

Per seed: the toy world's base-to-new split (16 shots of the 24 base photo classes, as bench/toyworld_methods.py
makes it, but evaluated on all 4 domains), exported to open_clip_train's CSV format (one PNG per image, a
tab-separated CSV of filepath and caption, the caption being the class prompt clipcite's ``flyp`` trains on). Both
programs then fine-tune the shipped toy CLIP with the same recipe (configs/default.yaml: epochs, batch, lr, weight
decay, no warmup, cosine, CPU, fp32), each in its own process; open_clip_train's final checkpoint becomes a clipcite
model folder, and ``clipcite evaluate`` scores both on the same eval sets. Throughput is then measured in short runs
(``--speed-epochs``) alternating clipcite, open_clip_train, clipcite, ... Both count images trained per second from
the first epoch's start to the last epoch's end, per-epoch checkpoint writes included (both write one per epoch).

What cannot be made identical (see ``PEER_DIFFERENCES``): the random streams (crops, batch order), and open_clip_train
trains the logit scale (no flag freezes it; it starts at the checkpoint's 26.93 and its final value is printed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clipcite.records import EvalReport

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = ROOT / "clipcite" / "model_configs"
CONFIG = ROOT / "configs" / "default.yaml"
SPLITS = ["splits.protocol=base2new", "splits.train_domains=[photo]"]  # every domain is evaluated
FLYP = ["train.method=flyp", "train.alpha=1.0"]
EVAL = ["eval.mean_over=all"]  # the mean over all 4 domains, photo (trained on) included
PEER_DIFFERENCES = [
    "logit scale: trained by open_clip_train (lr as every weight, no decay, clamped at 100; no flag freezes it), "
    "fixed in clipcite; both start from the checkpoint's own exp(logit_scale)",
    "crops: same distribution (RandomResizedCrop area 0.9-1, ratio 1:1, bicubic; open_clip's own train transform "
    "cannot set the ratio, so --aug-cfg use_timm=True builds timm's RandomResizedCropAndInterpolation), other draws: "
    "Python's random in open_clip_train, a hash of (seed, id, epoch) in clipcite",
    "batch order: torch's RandomSampler (global RNG) vs clipcite's seeded permutation; same batches per epoch (12)",
    "text tower: open_clip_train encodes all 32 captions of a batch, clipcite each distinct class prompt once "
    "(same loss and gradients, less compute)",
    "images: open_clip_train opens PNG files per item, clipcite decodes the same PNG bytes from its Parquet table",
    "Adam: open_clip_train's rule picks betas by model name (0.9/0.98, eps 1e-6 for names with 'vit'); "
    "removed here with --beta1 0.9 --beta2 0.999 --eps 1e-8 (torch's AdamW defaults, as clipcite)",
    "loss: both average the two cross-entropy directions (CLIP/FLYP); precision: both fp32 (--precision fp32)",
]
# Threads: on a busy machine (the 2 shared cores here, other jobs running) torch's default of one thread per core
# made both trainers 5-8x slower than one thread each (clipcite flyp: 18 vs 104-141 images/s, same minute);
# both trainers always get the same count.
log = logging.getLogger("bench")


def make_split(table: Path, out: Path, seed: int, extra: list[str]):
    """The base-to-new split of one seed; returns (splits folder, flyp config)."""
    from clipcite.config import load_config
    from clipcite.steps import sample_splits

    config = load_config(CONFIG, [f"seed={seed}", "device=cpu", *SPLITS, *FLYP, *EVAL, *extra])
    splits = out / "splits"
    sample_splits.run(str(table), str(splits), config)
    return splits, config


def export_csv(splits: Path, folder: Path, config) -> Path:
    """The train split as open_clip_train's CSV: ``filepath<TAB>caption``, the caption being the class prompt."""
    import pandas as pd

    from clipcite.data.rows import image_bytes
    from clipcite.steps.artifact_io import class_prompts, read_split

    rows, classes = read_split(str(splits / "train"))
    _, prompts = class_prompts(classes, config)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i, row in enumerate(rows):
        data = image_bytes(row)  # the same encoded bytes clipcite decodes
        if not data.startswith(b"\x89PNG"):
            raise ValueError(f"row id={row['id']!r}: expected PNG bytes")
        path = images / f"{i:05d}.png"
        path.write_bytes(data)
        records.append({"filepath": str(path), "caption": prompts[int(row["label"])]})
    csv = folder / "train.csv"
    pd.DataFrame(records).to_csv(csv, sep="\t", index=False)
    return csv


def peer_argv(csv: Path, logs: Path, name: str, config, epochs: int) -> list[str]:
    """open_clip_train's flags for clipcite's recipe (configs/default.yaml through ``config.train``)."""
    from clipcite.model.identity import resolve_checkpoint

    t = config.train
    return [
        *("--train-data", str(csv), "--dataset-type", "csv", "--csv-separator", "\t"),
        *("--csv-img-key", "filepath", "--csv-caption-key", "caption"),
        *("--model", config.model.arch, "--pretrained", str(resolve_checkpoint(config.model.pretrained))),
        *("--epochs", str(epochs), "--batch-size", str(t.batch_size), "--lr", str(t.lr), "--wd", str(t.weight_decay)),
        *("--warmup", str(t.warmup_steps), "--lr-scheduler", "cosine"),
        *("--beta1", "0.9", "--beta2", "0.999", "--eps", "1e-8"),  # torch's AdamW defaults, as clipcite's
        *("--precision", "fp32", "--device", "cpu", "--workers", str(t.num_workers), "--seed", str(config.seed)),
        "--aug-cfg",
        "use_timm=True",
        f"scale={tuple(t.crop_scale)}",
        f"ratio={tuple(t.crop_ratio)}",
        *("--logs", str(logs), "--name", name, "--save-frequency", "1", "--delete-previous-checkpoint"),
    ]


def run_logged(cmd: list[str], log_path: Path) -> None:
    with open(log_path, "w") as f:
        done = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log_path.read_text().splitlines()[-20:]
        raise RuntimeError(f"{cmd[:4]} failed (rc {done.returncode}); {log_path}:\n" + "\n".join(tail))


def train_clipcite(splits: Path, out: Path, seed: int, extra: list[str], epochs: int) -> dict:
    """``clipcite finetune`` (train.method=flyp, alpha 1) in its own process; returns train_summary.json."""
    overrides = [f"seed={seed}", "device=cpu", *SPLITS, *FLYP, *extra, f"train.epochs={epochs}"]
    cmd = [sys.executable, "-m", "clipcite.steps.finetune", "--config", str(CONFIG), "--splits", str(splits)]
    cmd += [*[a for o in overrides for a in ("--set", o)], "--out", str(out)]
    run_logged(cmd, out.with_suffix(".log"))
    return json.loads((out / "train_summary.json").read_text())


def train_peer(argv: list[str], logs: Path, name: str) -> dict:
    """open_clip_train through :func:`peer_main` in its own process; returns its timing and checkpoint path."""
    timing = logs / f"{name}.timing.json"
    cmd = [sys.executable, __file__, "open-clip-train", str(timing), *argv]
    run_logged(cmd, logs / f"{name}.log")
    return json.loads(timing.read_text())


def peer_main(timing_path: str, argv: list[str]) -> int:
    """The in-process wrapper: register clipcite's architectures, time the epochs, run open_clip_train unchanged."""
    import open_clip
    import open_clip_train.main as peer

    open_clip.add_model_config(MODEL_CONFIGS)  # before open_clip_train parses --model toyclip
    epochs: list[tuple[float, float, int]] = []
    train_one_epoch = peer.train_one_epoch

    def timed(model, data, *args, **kwargs):
        started = time.perf_counter()
        train_one_epoch(model, data, *args, **kwargs)
        loader = data["train"].dataloader  # drop_last: every batch is full
        epochs.append((started, time.perf_counter(), loader.num_batches * loader.batch_size))

    peer.train_one_epoch = timed  # a timer around the original; nothing else is replaced
    if peer.main(argv) == -1:
        return 1
    finished = time.perf_counter()  # the last epoch's checkpoint is written inside main's epoch loop
    images = sum(n for *_, n in epochs)
    name, logs = argv[argv.index("--name") + 1], argv[argv.index("--logs") + 1]
    body = {
        "images": images,
        "seconds": finished - epochs[0][0],
        "images_per_second": images / (finished - epochs[0][0]),
        "checkpoint": str(Path(logs) / name / "checkpoints" / f"epoch_{len(epochs)}.pt"),
    }
    Path(timing_path).write_text(json.dumps(body, indent=2))
    return 0


def convert_peer(checkpoint: Path, out: Path, config, splits: Path) -> float:
    """open_clip_train's final checkpoint as a clipcite model folder (base: the toy CLIP); returns its exp(scale)."""
    import torch

    from clipcite.config import to_dict
    from clipcite.model.clip import load_model, save_model
    from clipcite.records import ModelMeta
    from clipcite.steps.artifact_io import class_prompts, read_split

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    weights = {k.removeprefix("module."): v for k, v in state["state_dict"].items()}
    base = load_model(config.model.arch, config.model.pretrained)
    missing = base.model.state_dict().keys() ^ weights.keys()
    if missing:
        raise ValueError(f"{checkpoint}: keys differ from {config.model.arch}'s: {sorted(missing)[:5]}")
    _, classes = read_split(str(splits / "train"))
    template, _ = class_prompts(classes, config)
    scale = float(weights["logit_scale"].exp())
    meta = ModelMeta(
        arch=base.name,
        base_identity=base.identity,
        method="open_clip_train",
        classnames=tuple(classes.names),
        template=template,
        dataset=classes.dataset,
        alpha=1.0,
        seed=config.seed,
        logit_scale=scale,
        config=to_dict(config),
    )
    save_model(base, weights, out, meta)
    return scale


def run_seed(table: Path, out: Path, seed: int, extra: list[str], zeroshot: bool) -> dict:
    """Both trainers on one seed's split, full recipe, scored by ``clipcite evaluate`` (with the zero-shot model
    beside clipcite's when ``zeroshot``: the eval sets are every test image, the same for every seed)."""
    import dataclasses

    from clipcite.steps import evaluate

    splits, config = make_split(table, out, seed, extra)
    csv = export_csv(splits, out / "csv", config)
    epochs = config.train.epochs
    ours = train_clipcite(splits, out / "clipcite-model", seed, extra, epochs)
    (out / "peer-logs").mkdir(parents=True, exist_ok=True)
    peer = train_peer(peer_argv(csv, out / "peer-logs", "train", config, epochs), out / "peer-logs", "train")
    peer_scale = convert_peer(Path(peer["checkpoint"]), out / "peer-model", config, splits)
    scored = {}
    for name, model, baseline in (("clipcite", "clipcite-model", zeroshot), ("peer", "peer-model", False)):
        eval_config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, zeroshot_baseline=baseline))
        scored[name] = evaluate.run(str(out / model), str(splits), str(out / f"{name}-eval"), eval_config)
    result = {m: accuracy(scored[m], "finetuned") for m in ("clipcite", "peer")}
    if zeroshot:
        result["zero-shot"] = accuracy(scored["clipcite"], "zeroshot")
    result["clipcite"].update(scale=ours["logit_scale"], images_per_second=ours["images_per_second"])
    result["peer"].update(scale=peer_scale, images_per_second=peer["images_per_second"])
    log.info("seed %d: %s", seed, json.dumps(result, default=lambda v: round(v, 2)))
    return result


def peer_installed() -> bool:
    """open_clip_train imports webdataset and braceexpand at start-up (bench/requirements-peer.txt)."""
    import importlib.util

    return all(importlib.util.find_spec(name) for name in ("webdataset", "braceexpand"))


def clipcite_half(table: Path, out: Path, extra: list[str]) -> int:
    """Without the peer's extras: the split, its CSV export, clipcite's training and evaluation, and the flags
    open_clip_train would get, read by its own parser (``open_clip_train.params`` imports neither extra)."""
    from open_clip_train.params import parse_args

    from clipcite.steps import evaluate

    splits, config = make_split(table, out, 1, extra)
    csv = export_csv(splits, out / "csv", config)
    ours = train_clipcite(splits, out / "clipcite-model", 1, extra, config.train.epochs)
    flags = parse_args(peer_argv(csv, out / "peer-logs", "train", config, config.train.epochs))
    scored = evaluate.run(str(out / "clipcite-model"), str(splits), str(out / "clipcite-eval"), config)
    hm = scored.mean["finetuned"]["hm"]
    print(f"clipcite: {ours['images_per_second']:.0f} images/s, mean HM {hm:.2f}; open_clip_train's flags parse: "
          f"{flags.epochs} epoch(s), batch {flags.batch_size}, lr {flags.lr}")  # fmt: skip
    return 0


def accuracy(body: EvalReport, model: str) -> dict:
    """Base/New/HM per domain and the mean over domains, from an evaluate output."""
    entry = {d: dict(v[model]) for d, v in body.domains.items()}
    return {**entry, "mean": dict(body.mean[model])}


def speed_rounds(out: Path, seed_dir: Path, seed: int, extra: list[str], epochs: int, rounds: int) -> dict:
    """images/s of short runs, alternating clipcite and open_clip_train on the same split."""
    from clipcite.config import load_config

    config = load_config(CONFIG, [f"seed={seed}", "device=cpu", *SPLITS, *FLYP, *extra])
    out.mkdir(parents=True, exist_ok=True)
    speeds: dict[str, list[float]] = {"clipcite": [], "peer": []}
    for r in range(rounds):
        ours = train_clipcite(seed_dir / "splits", out / f"clipcite-{r}", seed, extra, epochs)
        speeds["clipcite"].append(ours["images_per_second"])
        argv = peer_argv(seed_dir / "csv" / "train.csv", out, f"peer-{r}", config, epochs)
        speeds["peer"].append(train_peer(argv, out, f"peer-{r}")["images_per_second"])
        log.info("speed round %d: clipcite %.0f, open_clip_train %.0f img/s", r + 1, *(s[-1] for s in speeds.values()))
    return speeds


def report(runs: list[dict], speeds: dict, seeds: list[int], command: str) -> str:
    from clipcite.evaluation.metrics import aggregate
    from clipcite.toyworld.world import DOMAINS

    rows = {"zero-shot": "zero-shot", "clipcite": "clipcite `flyp`", "peer": "open_clip_train"}
    summary = {m: aggregate([r[m] for r in runs if m in r]) for m in rows}
    shifted = [d for d in DOMAINS if d != "photo"]
    lines = [
        f"Toy world base-to-new (16 shots of the 24 base photo classes), seed(s) {', '.join(map(str, seeds))}; top-1 %"
        " from `clipcite evaluate` (eval.mean_over=all) on every test image of 4 domains. Every HM is HM(mean Base,"
        " mean New), over domains as evaluate computes it and over seeds as aggregate does; ± is the std over seeds.",
        "",
        f"Command: `{command}`",
        "",
        "| model | loss temperature | photo B / N / HM | mean of 4 domains B / N / HM | "
        + " | ".join(f"{d} HM" for d in shifted)
        + " | train img/s (full runs) |",
        "|---|---|---|---|" + "---|" * len(shifted) + "---|",
    ]
    for key, label in rows.items():
        s = summary[key]
        scale = "-" if key == "zero-shot" else f"{s['scale']['mean']:.2f}" + (" (final, learned)" * (key == "peer"))
        speed = "-" if key == "zero-shot" else f"{s['images_per_second']['mean']:.0f}"
        cells = [
            " / ".join(f"{s['photo'][k]['mean']:.2f}" for k in ("base", "new", "hm")),
            f"{s['mean']['base']['mean']:.2f} / {s['mean']['new']['mean']:.2f} / {s['mean']['hm']['mean']:.2f}"
            f" ± {s['mean']['hm']['std']:.2f}",
            *[f"{s[d]['hm']['mean']:.2f}" for d in shifted],
        ]
        lines.append(f"| {label} | {scale} | " + " | ".join(cells) + f" | {speed} |")
    diffs = [r["clipcite"]["mean"]["hm"] - r["peer"]["mean"]["hm"] for r in runs]
    noise = max(summary[m]["mean"]["hm"]["std"] for m in ("clipcite", "peer"))
    gap = summary["clipcite"]["mean"]["hm"]["mean"] - summary["peer"]["mean"]["hm"]["mean"]
    ours, theirs = (sum(speeds[m]) / len(speeds[m]) for m in ("clipcite", "peer"))
    lines += [
        "",
        "Mean HM, clipcite minus open_clip_train, per seed (same split): " + ", ".join(f"{d:+.2f}" for d in diffs),
        f"Accuracy goal (|gap of mean HM| <= the larger seed std, {noise:.2f}): gap {gap:+.2f} -> "
        + ("holds" if len(runs) > 1 and abs(gap) <= noise else "does not hold" if len(runs) > 1 else "needs >1 seed"),
        "",
        "Throughput of the full runs above, clipcite / open_clip_train per seed (images/s): "
        + ", ".join(f"{r['clipcite']['images_per_second']:.0f} / {r['peer']['images_per_second']:.0f}" for r in runs),
        "Throughput, short runs alternating clipcite / open_clip_train (images/s): "
        + ", ".join(f"{a:.0f} / {b:.0f}" for a, b in zip(speeds["clipcite"], speeds["peer"], strict=True)),
        f"Throughput goal (clipcite >= open_clip_train): mean {ours:.0f} vs {theirs:.0f} img/s, ratio "
        f"{ours / theirs if theirs else float('nan'):.3f} -> "
        + ("holds" if ours >= theirs else f"does not hold (short by {theirs - ours:.0f})"),
        "",
        "Differences that remain:",
        *[f"- {d}" for d in PEER_DIFFERENCES],
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    os.environ["TQDM_DISABLE"] = "1"  # before clipcite imports tqdm, which reads it then; the trainers inherit it
    import torch

    from bench.smoke import SMOKE_COUNTS, SMOKE_HELP, SMOKE_OVERRIDES
    from clipcite.steps.command_line import add_overrides_argument
    from clipcite.toyworld.generate import write_world

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/peer")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--speed-epochs", type=int, default=5, help="epochs of each throughput run")
    parser.add_argument("--speed-rounds", type=int, default=2, help="clipcite/open_clip_train pairs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (note above)")
    add_overrides_argument(parser)  # applied to both trainers, e.g. --set train.logit_scale=100
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_HELP}; 1 speed round of 1 epoch")
    args = parser.parse_args(argv)
    counts = None
    if args.smoke:
        args.seeds, args.speed_epochs, args.speed_rounds, counts = [1], 1, 1, SMOKE_COUNTS
        # batch 8: open_clip_train drops the last incomplete batch, and 1 shot of 24 classes is 24 images
        args.overrides = [*SMOKE_OVERRIDES, "train.batch_size=8", *args.overrides]
    os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    torch.set_num_threads(args.threads)  # evaluate runs in this process; the trainers inherit the environment
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    out, started = Path(args.out), time.perf_counter()
    for stale in [out / "speed", *(out / f"seed{s}" for s in args.seeds)]:  # open_clip_train refuses old run names
        shutil.rmtree(stale, ignore_errors=True)
    write_world(str(out / "table"), seed=1, counts=counts)  # always rewritten, as bench/toyworld_methods.py does
    if args.smoke and not peer_installed():
        print("open_clip_train's extras (bench/requirements-peer.txt) are not installed: the smoke run checks the "
              "clipcite half and that open_clip_train accepts the flags it would get")  # fmt: skip
        return clipcite_half(out / "table", out / f"seed{args.seeds[0]}", args.overrides)
    runs = [run_seed(out / "table", out / f"seed{s}", s, args.overrides, s == args.seeds[0]) for s in args.seeds]
    first = out / f"seed{args.seeds[0]}"
    speeds = speed_rounds(out / "speed", first, args.seeds[0], args.overrides, args.speed_epochs, args.speed_rounds)
    command = "python -m bench.peer_open_clip_train " + " ".join(sys.argv[1:])
    text = report(runs, speeds, args.seeds, command.strip())
    (out / "peer_open_clip_train.md").write_text(text)
    body = {"seeds": args.seeds, "runs": runs, "speeds": speeds, "speed_epochs": args.speed_epochs}
    (out / "peer_open_clip_train.json").write_text(json.dumps(body, indent=1))
    print(text)
    print(f"total {time.perf_counter() - started:.0f}s; wrote {out}/peer_open_clip_train.{{md,json}}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["open-clip-train"]:  # the peer's process: python <this file> open-clip-train TIMING ARGV...
        raise SystemExit(peer_main(sys.argv[2], sys.argv[3:]))
    raise SystemExit(main())
