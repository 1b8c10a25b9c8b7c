"""The method table on the toy world: base-to-new and cross-domain, 9 methods x 3 seeds (run by hand).

    python -m bench.toyworld_methods --out runs/bench            # the full table
    python -m bench.toyworld_methods --out runs/bench --quick    # one seed, 5 epochs: a fast look
    python -m bench.toyworld_methods --out runs/bench --smoke    # seconds, a tiny world: every path runs (tests)
    python -m bench.toyworld_methods --out runs/bench --methods lora linear_probe   # some rows only

Base-to-new: 16 shots of the 24 base classes of the main domain (photo); Base / New / HM on photo.
Cross-domain: 16 shots of all 48 classes of photo; top-1 on every domain (photo is in-domain).
Every method runs the same steps as the CLI (sample-splits, cache-teacher, finetune, evaluate) with the same
hyperparameters (configs/default.yaml); only the method's own switches differ. ``ce`` and ``flyp`` are plain
fine-tuning (alpha = 1), as they are published; ``cite`` uses the paper's alpha = 0.5; ``lora`` (CLIP-LoRA) and
``linear_probe`` (CLAP) run with their own published settings (``train.lora.*``, ``train.probe.*``).

Beside the test numbers every trained model is scored as the pipeline's ``validate`` step scores a candidate (top-1
on the validation split, the trained classes only) with its training time, trainable parameters and artefact size,
and the selection rule (``clipcite.evaluation.selection.pick``) is applied per seed and protocol to two candidate sets:
the pick on validation is compared with the best candidate on test by the gate's metric (HM under base-to-new, the
shifted domains' mean cross-domain), so the table shows whether picking on validation finds the best on test.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from bench.smoke import SMOKE_COUNTS, SMOKE_HELP, SMOKE_OVERRIDES
from clipcite.config import load_config
from clipcite.evaluation.metrics import aggregate
from clipcite.evaluation.report import pyplot
from clipcite.evaluation.selection import Candidate, pick
from clipcite.steps import cache_teacher, evaluate, finetune, sample_splits, validate
from clipcite.steps.command_line import add_overrides_argument
from clipcite.toyworld.generate import write_world
from clipcite.toyworld.world import DOMAINS
from clipcite.train_params import REGISTRY

log = logging.getLogger("bench")
METHODS = {
    "zero-shot": ["train.method=zeroshot"],
    "ce": ["train.method=ce", "train.alpha=1.0"],
    "flyp": ["train.method=flyp", "train.alpha=1.0"],
    "cite": [],
    "cite alpha=1": ["train.alpha=1.0"],
    "cite w/o VLD": ["train.eta=0.0"],
    "cite w/o SCL": ["train.lam=0.0"],
    "lora": ["train.method=lora"],
    "linear_probe": ["train.method=linear_probe"],
}


def row_method(row: str) -> str:
    """The method (a name of ``clipcite.train_params.REGISTRY``) a row of ``METHODS`` trains."""
    return load_config("default", METHODS[row]).train.method


# Each method's row with its published settings, the first row that trains it, in the registry's order (a test
# checks every method has one).
_FIRST_ROWS = {row_method(row): row for row in reversed(METHODS)}
METHOD_ROWS = {method: _FIRST_ROWS[method] for method in REGISTRY if method in _FIRST_ROWS}
# What selection chooses among (pipeline method names; the ablations are not methods a user fans out over): CITE
# and its cheaper alternatives (the question), and every method the pipeline's ``methods`` can list.
CHEAPER = "cite, lora, linear_probe"
CANDIDATE_SETS = {CHEAPER: tuple(CHEAPER.split(", ")), "all methods": tuple(METHOD_ROWS.values())}
SHIFTED = tuple(d for d in DOMAINS if d != "photo")  # cross-domain: trained on photo, the gate's mean leaves it out
PROTOCOLS = {
    "b2n": ["splits.protocol=base2new", "splits.train_domains=[photo]", "splits.eval_domains=[photo]"],
    "xd": ["splits.protocol=fewshot", "splits.train_domains=[photo]"],
}
SMOKE_METHODS = ("zero-shot", "cite", "lora", "linear_probe")  # --smoke: one of each method module


def prepare(table: Path, out: Path, protocol: str, seed: int, extra: list[str]) -> tuple[list[str], Path, Path]:
    """Sample one protocol's splits and cache its teacher; returns (overrides every method shares, splits, cache)."""
    base = [f"seed={seed}", "device=cpu", "eval.zeroshot_baseline=false", *PROTOCOLS[protocol], *extra]
    config = load_config("configs/default.yaml", base)
    splits, cache = out / f"{protocol}-splits", out / f"{protocol}-teacher"
    sample_splits.run(str(table), str(splits), config)
    cache_teacher.run(str(splits), str(cache), config)
    return base, splits, cache


def evaluate_model(model: Path, splits: Path, metrics: Path, config, protocol: str) -> dict:
    """Evaluate a saved model; b2n: photo Base/New/HM, xd: top-1 per domain and the shifted domains' mean; both
    with the validation score and the costs the selection sees (``val``: clipcite.evaluation.selection.Candidate's
    fields)."""
    entry = evaluate.run(str(model), str(splits), str(metrics), config).domains
    if protocol == "b2n":
        result = {k: entry["photo"]["finetuned"][k] for k in ("base", "new", "hm")}
    else:
        result = {d: entry[d]["finetuned"]["top1"] for d in DOMAINS}
        result["shifted"] = sum(result[d] for d in SHIFTED) / len(SHIFTED)
    candidate = validate.score(str(model), str(splits), config)
    result["val"] = {k: v for k, v in candidate.__dict__.items() if k != "method"}
    return result


def test_metric(result: dict, protocol: str) -> float:
    """The gate's metric on test: HM under base-to-new, the mean over the domains not trained on cross-domain."""
    return result["hm"] if protocol == "b2n" else result["shifted"]


def selection(run: dict, protocol: str, candidates: tuple[str, ...]) -> dict:
    """The rule's pick on validation among ``candidates`` (one seed, one protocol), and the best on test."""
    entries = {m: run[m][protocol] for m in candidates if protocol in run.get(m, {})}
    winner = pick([Candidate(method=m, **e["val"]) for m, e in entries.items()])
    best = max(entries, key=lambda m: test_metric(entries[m], protocol))
    return {
        "picked": winner.method,
        "test_best": best,
        "picked_test": test_metric(entries[winner.method], protocol),
        "best_test": test_metric(entries[best], protocol),
        "val": {m: e["val"]["val_top1"] for m, e in entries.items()},
    }


def run_one(
    table: Path,
    out: Path,
    seed: int,
    extra: list[str],
    protocols: tuple[str, ...] = tuple(PROTOCOLS),
    methods: tuple[str, ...] = tuple(METHODS),
    done: dict | None = None,
    save=None,
) -> dict:
    """``methods`` of ``protocols`` for one seed; returns {method: {"b2n": {...}, "xd": {...}}}. Entries already in
    ``done`` (an earlier, interrupted or partial run's) are kept; ``save(results)`` is called after every model."""
    results: dict = {m: dict((done or {}).get(m, {})) for m in methods}
    for protocol in protocols:
        todo = [m for m in methods if protocol not in results[m]]
        if not todo:
            continue
        base, splits, cache = prepare(table, out, protocol, seed, extra)
        for method in todo:
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
            if save is not None:
                save({**(done or {}), **results})
    return results


def seed_results(
    table: Path, out: Path, seed: int, extra: list[str], protocols: tuple[str, ...], methods: tuple[str, ...]
) -> dict:
    """One seed's results. What an earlier run with the same settings (``extra``: --quick, --smoke, --set) left in
    ``out/results.json`` is reused method by method and protocol by protocol (the machine is shared and a full run
    takes long; delete the file to measure again), the rest is measured, and the file is rewritten (via a temp
    file) after every model, so an interrupted run resumes."""
    saved = out / "results.json"
    stored = json.loads(saved.read_text()) if saved.exists() else {}
    done: dict = {}
    if stored.get("settings") == extra:  # entries without a validation score predate the selection columns
        done = {m: {p: e for p, e in entry.items() if "val" in e} for m, entry in stored["results"].items()}
    elif stored:
        log.info("seed %d: %s holds other settings (%s); measuring again", seed, saved, stored.get("settings"))
    reused = sorted(m for m in methods if all(p in done.get(m, {}) for p in protocols))
    if reused:
        log.info("seed %d: reusing %s for %s", seed, saved, ", ".join(reused))

    def save(results: dict) -> None:
        out.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"settings": extra, "results": results}, indent=1))
        tmp.replace(saved)

    results = run_one(table, out, seed, extra, tuple(protocols), methods, done, save)
    save({**done, **results})
    return results


def table_markdown(summary: dict, seeds: list[int], command: str) -> str:
    cols = ["Base", "New", "HM", *DOMAINS, "shifted"]
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
        cells = [b2n.get(k) for k in ("base", "new", "hm")] + [xd.get(d) for d in (*DOMAINS, "shifted")]
        lines.append(
            f"| {method} | " + " | ".join(f"{c['mean']:.1f} ± {c['std']:.1f}" if c else "-" for c in cells) + " |"
        )
    lines += [
        "",
        "Base/New/HM: base-to-new on photo (16 shots of 24 base classes). Domain columns: cross-domain "
        "(16 shots of all 48 photo classes, tested on each domain; photo is in-domain; shifted: the mean of the other "
        "three). HM over seeds: "
        "HM(mean Base, mean New), ± the spread of the per-seed HMs.",
    ]
    return "\n".join(lines) + "\n"


def _size(n: float) -> str:
    return "-" if not n else f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def costs_markdown(summary: dict) -> str:
    """What each method costs (mean over seeds): training time (finetune's; the shared teacher cache, which the
    probe trains on, is not in it), trainable parameters (b2n's), what it adds to the base model (b2n / xd where
    they differ), and the validation score the selection sees."""
    lines = [
        "| method | train s (b2n) | train s (xd) | trainable parameters | artefact | val top-1 b2n | val top-1 xd |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, entry in summary.items():
        val = {p: entry.get(p, {}).get("val") for p in PROTOCOLS}
        if not any(val.values()):
            continue
        some = next(v for v in val.values() if v)
        secs = [f"{v['seconds']['mean']:.0f}" if v else "-" for v in val.values()]
        tops = [f"{v['val_top1']['mean']:.1f} ± {v['val_top1']['std']:.1f}" if v else "-" for v in val.values()]
        params = int(some["trainable_parameters"]["mean"])
        sizes = list(dict.fromkeys(_size(v["artefact_bytes"]["mean"]) for v in val.values() if v))  # b2n / xd
        lines.append(
            f"| {method} | {secs[0]} | {secs[1]} | {params:,} | {' / '.join(sizes)} | " + " | ".join(tops) + " |"
        )
    return "\n".join(lines) + "\n"


def selection_markdown(picks: dict) -> str:
    """Per candidate set, protocol and seed: the pick on validation, the best on test, and what the pick lost."""
    lines = [
        "| candidates | protocol | seed | picked on val | best on test | test metric picked / best | match |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, by_protocol in picks.items():
        for protocol, by_seed in by_protocol.items():
            for seed, p in by_seed.items():
                match = "yes" if p["picked"] == p["test_best"] else "no"
                lines.append(
                    f"| {name} | {protocol} | {seed} | {p['picked']} | {p['test_best']} | "
                    f"{p['picked_test']:.2f} / {p['best_test']:.2f} | {match} |"
                )
    lines += [
        "",
        "Test metric: HM (b2n) or the mean of sketch, noisy and painting (xd), the gate's metric. Picked by "
        "clipcite.evaluation.selection (best validation top-1 on the trained classes; within 0.1 points, fewer "
        "trainable parameters).",
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
    parser.add_argument(
        "--methods", nargs="+", choices=list(METHODS), metavar="METHOD", help="rows to run (default: every row)"
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
    methods = tuple(args.methods or (SMOKE_METHODS if args.smoke else METHODS))
    runs = [seed_results(table, out / f"seed{seed}", seed, extra, args.protocols, methods) for seed in seeds]
    summary = {m: aggregate([r[m] for r in runs]) for m in methods}
    picks = {
        name: {
            p: {seed: selection(run, p, present) for seed, run in zip(seeds, runs, strict=True)} for p in args.protocols
        }
        for name, wanted in CANDIDATE_SETS.items()
        if len(present := tuple(m for m in wanted if m in methods)) > 1
    }
    command = (
        "python -m bench.toyworld_methods"
        + (" --quick" if args.quick else "")
        + (" --smoke" if args.smoke else "")
        + (f" --seeds {' '.join(map(str, seeds))}" if seeds != [1, 2, 3] and not (args.quick or args.smoke) else "")
        + (f" --protocols {' '.join(args.protocols)}" if args.protocols != list(PROTOCOLS) else "")
        + (f" --methods {' '.join(args.methods)}" if args.methods else "")
    )
    text = table_markdown(summary, seeds, command) + "\n" + costs_markdown(summary)
    if picks:
        text += "\n" + selection_markdown(picks)
    (out / "toyworld_methods.md").write_text(text)
    (out / "toyworld_methods.json").write_text(
        json.dumps({"seeds": seeds, "runs": runs, "summary": summary, "selection": picks}, indent=1)
    )
    plot(summary, out / "toyworld_methods.png")
    print(text)
    print(f"total {time.perf_counter() - started:.0f}s; wrote {out}/toyworld_methods.{{md,json,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
