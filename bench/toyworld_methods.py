"""The method table on the toy world: base-to-new and cross-domain, 7 methods x 3 seeds (run by hand).

    python bench/toyworld_methods.py --out runs/bench            # the full table (about 19 min on 2 cores)
    python bench/toyworld_methods.py --out runs/bench --quick    # one seed, 5 epochs: a fast look
    python bench/toyworld_methods.py --out runs/bench --smoke    # seconds, a tiny world: every path runs (tests)

Base-to-new: 16 shots of the 24 base classes of the main domain (photo); Base / New / HM on photo.
Cross-domain: 16 shots of all 48 classes of photo; top-1 on every domain (photo is in-domain).
Every method runs the same steps as the CLI (sample-splits, cache-teacher, finetune, evaluate) with the same
hyperparameters (configs/default.yaml); only the method's own switches differ. ``ce`` and ``flyp`` are plain
fine-tuning (alpha = 1), as they are published; ``cite`` uses the paper's alpha = 0.5.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from smoke import SMOKE_COUNTS, SMOKE_HELP, SMOKE_OVERRIDES

from clipcite.config import load_config
from clipcite.metrics import aggregate
from clipcite.report import pyplot
from clipcite.steps import cache_teacher, evaluate, finetune, sample_splits
from clipcite.steps.common import add_overrides_argument
from clipcite.toyworld.generate import write_world
from clipcite.toyworld.world import DOMAINS

log = logging.getLogger("bench")
METHODS = {
    "zero-shot": ["train.method=zeroshot"],
    "ce": ["train.method=ce", "train.alpha=1.0"],
    "flyp": ["train.method=flyp", "train.alpha=1.0"],
    "cite": [],
    "cite alpha=1": ["train.alpha=1.0"],
    "cite w/o VLD": ["train.eta=0.0"],
    "cite w/o SCL": ["train.lam=0.0"],
}
PROTOCOLS = {
    "b2n": ["splits.protocol=base2new", "splits.train_domains=[photo]", "splits.eval_domains=[photo]"],
    "xd": ["splits.protocol=fewshot", "splits.train_domains=[photo]"],
}
SMOKE_METHODS = ("zero-shot", "cite")  # --smoke: the two ends of the table (the other rows only switch losses)


def prepare(table: Path, out: Path, protocol: str, seed: int, extra: list[str]) -> tuple[list[str], Path, Path]:
    """Sample one protocol's splits and cache its teacher; returns (overrides every method shares, splits, cache)."""
    base = [f"seed={seed}", "device=cpu", "eval.zeroshot_baseline=false", *PROTOCOLS[protocol], *extra]
    config = load_config("configs/default.yaml", base)
    splits, cache = out / f"{protocol}-splits", out / f"{protocol}-teacher"
    sample_splits.run(str(table), str(splits), config)
    cache_teacher.run(str(splits), str(cache), config)
    return base, splits, cache


def evaluate_model(model: Path, splits: Path, metrics: Path, config, protocol: str) -> dict:
    """Evaluate a saved model; b2n: photo Base/New/HM, xd: top-1 per domain."""
    entry = evaluate.run(str(model), str(splits), str(metrics), config)["domains"]
    if protocol == "b2n":
        return {k: entry["photo"]["finetuned"][k] for k in ("base", "new", "hm")}
    return {d: entry[d]["finetuned"]["top1"] for d in DOMAINS}


def run_one(
    table: Path,
    out: Path,
    seed: int,
    extra: list[str],
    protocols: tuple[str, ...] = tuple(PROTOCOLS),
    methods: tuple[str, ...] = tuple(METHODS),
) -> dict:
    """``methods`` of ``protocols`` for one seed; returns {method: {"b2n": {...}, "xd": {...}}}."""
    results: dict = {m: {} for m in methods}
    for protocol in protocols:
        base, splits, cache = prepare(table, out, protocol, seed, extra)
        for method in methods:
            switches = METHODS[method]
            method_config = load_config("configs/default.yaml", [*base, *switches])
            slug = method.replace(" ", "_").replace("/", "").replace("=", "")
            model, metrics = out / f"{protocol}-{slug}-model", out / f"{protocol}-{slug}-eval"
            started = time.perf_counter()
            finetune.run(str(splits), str(model), method_config, cache_uri=str(cache))
            results[method][protocol] = evaluate_model(model, splits, metrics, method_config, protocol)
            log.info(
                "seed %d %s %-13s %.0fs %s",
                seed,
                protocol,
                method,
                time.perf_counter() - started,
                json.dumps(results[method][protocol], default=lambda v: round(v, 1)),
            )
    return results


def seed_results(
    table: Path, out: Path, seed: int, extra: list[str], protocols: tuple[str, ...], methods: tuple[str, ...]
) -> dict:
    """One seed's results: read from ``out/results.json`` when a finished earlier run left them there (the machine
    is shared and a full run takes long; delete the file to measure again), else measured and written there."""
    saved = out / "results.json"
    if saved.exists():
        results = json.loads(saved.read_text())
        if all(p in entry for entry in results.values() for p in protocols) and set(results) == set(methods):
            log.info("seed %d: reusing %s", seed, saved)
            return results
    results = run_one(table, out, seed, extra, tuple(protocols), methods)
    saved.write_text(json.dumps(results, indent=1))
    return results


def table_markdown(summary: dict, seeds: list[int], command: str) -> str:
    cols = ["Base", "New", "HM", *DOMAINS]
    lines = [
        f"Toy world, {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); top-1 %, mean ± std.",
        "",
        f"Command: `{command}`",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for method, entry in summary.items():
        b2n, xd = entry.get("b2n", {}), entry.get("xd", {})
        cells = [b2n.get(k) for k in ("base", "new", "hm")] + [xd.get(d) for d in DOMAINS]
        lines.append(
            f"| {method} | " + " | ".join(f"{c['mean']:.1f} ± {c['std']:.1f}" if c else "-" for c in cells) + " |"
        )
    lines += [
        "",
        "Base/New/HM: base-to-new on photo (16 shots of 24 base classes). Domain columns: cross-domain "
        "(16 shots of all 48 photo classes, tested on each domain; photo is in-domain). HM over seeds: "
        "HM(mean Base, mean New), ± the spread of the per-seed HMs.",
    ]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    cols = [("b2n", "hm", "HM"), *[("xd", d, d) for d in DOMAINS]]
    cols = [c for c in cols if all(c[0] in entry for entry in summary.values())]  # protocols that ran
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(summary)
    for i, (method, entry) in enumerate(summary.items()):
        values = [entry[p][k]["mean"] for p, k, _ in cols]
        errors = [entry[p][k]["std"] for p, k, _ in cols]
        ax.bar([x + i * width for x in range(len(cols))], values, width, yerr=errors, label=method, capsize=2)
    ax.set_xticks([x + width * (len(summary) - 1) / 2 for x in range(len(cols))], [c for *_, c in cols])
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Toy world: base-to-new HM and cross-domain accuracy")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench", help="folder for the table, every run and the results")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds to average over")
    parser.add_argument("--quick", action="store_true", help="one seed, 5 epochs")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument(
        "--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS), help="protocols to run"
    )
    add_overrides_argument(parser)  # applied to every run
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    seeds = args.seeds[:1] if args.quick or args.smoke else args.seeds
    extra = (["train.epochs=5"] if args.quick else []) + (SMOKE_OVERRIDES if args.smoke else []) + args.overrides
    out = Path(args.out)
    started = time.perf_counter()
    table = out / "table"
    # always rewritten (seconds): a table left by an older version of the world would silently skew the numbers
    write_world(str(table), seed=1, counts=SMOKE_COUNTS if args.smoke else None)
    methods = SMOKE_METHODS if args.smoke else tuple(METHODS)
    runs = [seed_results(table, out / f"seed{seed}", seed, extra, args.protocols, methods) for seed in seeds]
    summary = {m: aggregate([r[m] for r in runs]) for m in methods}
    command = (
        "python bench/toyworld_methods.py"
        + (" --quick" if args.quick else "")
        + (" --smoke" if args.smoke else "")
        + (f" --seeds {' '.join(map(str, seeds))}" if seeds != [1, 2, 3] and not (args.quick or args.smoke) else "")
        + (f" --protocols {' '.join(args.protocols)}" if args.protocols != list(PROTOCOLS) else "")
    )
    text = table_markdown(summary, seeds, command)
    (out / "toyworld_methods.md").write_text(text)
    (out / "toyworld_methods.json").write_text(json.dumps({"seeds": seeds, "runs": runs, "summary": summary}, indent=1))
    plot(summary, out / "toyworld_methods.png")
    print(text)
    print(f"total {time.perf_counter() - started:.0f}s; wrote {out}/toyworld_methods.{{md,json,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
