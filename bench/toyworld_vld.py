"""Where does L_VLD matter? An eta sweep on the toy world, both ``vld_over`` settings, with and without the ensemble.

    python -m bench.toyworld_vld --out runs/vld                  # seeds 1 2 3
    python -m bench.toyworld_vld --out runs/vld --seeds 1        # one seed
    python -m bench.toyworld_vld --out runs/vld --quick          # one seed, 5 epochs: a fast look
    python -m bench.toyworld_vld --out runs/vld --smoke          # seconds, a tiny world: every path runs (tests)

The protocols are bench/toyworld_methods.py's (base-to-new on photo: Base/New/HM; cross-domain from photo: top-1
per domain), with the same splits, teacher cache and recipe (configs/default.yaml, the default loss temperature).
For each (train.vld_over, train.eta) CLIP-CITE is fine-tuned once with alpha = 1; the alpha = 0.5 model is that
model averaged with the zero-shot weights by ``clipcite.model.clip.average_weights``, the very tensors finetune saves
with ``train.alpha=0.5``. eta = 0 has no L_VLD, so it is trained once and shown under both settings.

Every model is scored in one pass over the test images (decoded once per protocol; the prediction is
clipcite.evaluation.predict.predict's argmax, and the zero-shot model's top-1 is checked against ``clipcite evaluate``).
Besides accuracy, each model's image-text similarities are compared with the zero-shot model's (the teacher's):
mean KL(teacher || model) of the softmax over the eval set's class prompts at the loss temperature. That is the
distance L_VLD penalises, measured on test images and the eval set's classes instead of training batches.
``vld first/last``: the L_VLD term during the first and the last epoch of training (eta > 0 only).
Results per seed are kept in ``<out>/seed<N>/vld.json`` and reused by a rerun with the same settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.smoke import SMOKE_COUNTS, SMOKE_HELP, SMOKE_OVERRIDES
from bench.toyworld_methods import PROTOCOLS, evaluate_model, prepare
from clipcite.config import load_config
from clipcite.data.crops import model_input
from clipcite.data.loading import EvalDataset
from clipcite.data.prompts import prompts_for
from clipcite.evaluation.metrics import aggregate, harmonic_mean, top1
from clipcite.evaluation.report import pyplot
from clipcite.model.clip import LoadedModel, average_weights, encode_texts, load_saved
from clipcite.records import SplitsManifest
from clipcite.steps import finetune
from clipcite.steps.artifact_io import read_split
from clipcite.steps.command_line import add_overrides_argument
from clipcite.toyworld.generate import write_world
from clipcite.toyworld.world import DOMAINS

log = logging.getLogger("bench")
CONFIG = "configs/default.yaml"
ETAS = [0.0, 0.1, 0.5, 1.0, 2.0]
SMOKE_ETAS = [0.0, 1.0]  # --smoke: the run without L_VLD and one with it, under both vld_over settings
OVERS = ["batch", "classes"]
ALPHAS = [1.0, 0.5]
SHIFTED = [d for d in DOMAINS if d != "photo"]


def variants(etas: list[float]) -> list[tuple[str, float, str]]:
    """(key, eta, vld_over) in the order run: the etas as given, each for both settings; eta = 0 once (no L_VLD,
    so vld_over does nothing). A run stopped early has covered the etas given first."""
    out = []
    for eta in etas:
        out += [("eta=0", 0.0, "batch")] if eta == 0.0 else [(f"{o} eta={eta:g}", eta, o) for o in OVERS]
    return out


def ordered(summary: dict) -> list[str]:
    """Table rows: zero-shot, eta = 0, then each vld_over setting by eta."""

    def rank(key: str) -> tuple:
        if key in ("zero-shot", "eta=0"):
            return (key != "zero-shot", 0.0)
        over, eta = key.split(" eta=")
        return (2 + OVERS.index(over), float(eta))

    return sorted(summary, key=rank)


@torch.no_grad()
def load_sets(splits: Path, loaded: LoadedModel, template: str) -> list[dict]:
    """Every eval set of the splits, decoded once: name, domain, subset, eval-view images, labels, prompts."""
    sets = []
    for spec in SplitsManifest.read(splits).eval_sets:
        rows, classes = read_split(str(splits / "eval" / spec.name))
        loader = DataLoader(EvalDataset(rows, loaded.preprocess_cfg), batch_size=256)
        images, labels = zip(*[(x, y) for _, x, y in loader], strict=True)
        prompts = prompts_for(template or classes.template, classes.names)
        normalised = model_input(torch.cat(images), loaded.preprocess_cfg, "cpu")
        sets.append({**dataclasses.asdict(spec), "images": normalised, "labels": torch.cat(labels), "prompts": prompts})
    return sets


@torch.no_grad()
def score(loaded: LoadedModel, sets: list[dict], scale: float) -> dict:
    """{set name: (log-softmax of scale * cos(image, class prompt) [N, C], predicted labels [N])}.

    The prediction is clipcite.evaluation.predict.predict's (argmax of cosine similarity over the set's prompts); the
    images are decoded once per protocol instead of once per model (the zero-shot check in run_seed compares the two).
    """
    model = loaded.model.eval()
    out = {}
    for s in sets:
        text = encode_texts(model, loaded.tokenizer, s["prompts"])
        chunks = [s["images"][i : i + 256] for i in range(0, len(s["images"]), 256)]
        sims = torch.cat([model.encode_image(x, normalize=True).float() for x in chunks]) @ text.T
        out[s["name"]] = (torch.log_softmax(scale * sims, dim=1), sims.argmax(dim=1))
    return out


def kl(teacher: torch.Tensor, student: torch.Tensor) -> float:
    """Mean over images of KL(teacher || student), from log-probabilities."""
    return float((teacher.exp() * (teacher - student)).sum(dim=1).mean())


def metrics(sets: list[dict], protocol: str, teacher: dict, student: dict) -> dict:
    """b2n: photo Base/New/HM; xd: top-1 per domain and the mean over the shifted ones; KL(teacher || model)."""
    acc = {s["name"]: top1(student[s["name"]][1], s["labels"]) for s in sets}
    kls = {s["name"]: kl(teacher[s["name"]][0], student[s["name"]][0]) for s in sets}
    if protocol == "b2n":
        out = {"base": acc["photo-base"], "new": acc["photo-new"]}
        out["hm"] = harmonic_mean(out["base"], out["new"])
    else:
        out = {s["domain"]: acc[s["name"]] for s in sets}
        out["shifted"] = sum(out[d] for d in SHIFTED) / len(SHIFTED)
        kls = {s["domain"]: kls[s["name"]] for s in sets}
        kls["shifted"] = sum(kls[d] for d in SHIFTED) / len(SHIFTED)
    return {**out, "kl": kls}


def vld_curve(model_dir: Path, epochs: int) -> dict:
    """Mean L_VLD term over the first and the last epoch's steps (empty when the run had no L_VLD)."""
    curves = [json.loads(line) for line in (model_dir / "curves.jsonl").read_text().splitlines()]
    first = [c["vld"] for c in curves if "vld" in c and c["epoch"] == 1]
    last = [c["vld"] for c in curves if "vld" in c and c["epoch"] == epochs]
    return {"first": sum(first) / len(first), "last": sum(last) / len(last)} if first and last else {}


def run_seed(table: Path, out: Path, seed: int, extra: list[str], args: argparse.Namespace) -> dict:
    """{variant: {protocol: {"alpha=A": {accuracy..., "kl": {...}}, "vld": {...}}}} for one seed."""
    results: dict = {"zero-shot": {}}
    etas, alphas = args.etas, args.alphas
    for protocol in args.protocols:
        base, splits, cache = prepare(table, out, protocol, seed, extra)
        zs_config = load_config(CONFIG, [*base, "train.method=zeroshot"])
        zs_model = out / f"{protocol}-zero-shot-model"
        finetune.run(str(splits), str(zs_model), zs_config, cache_uri=str(cache))
        zeroshot, meta = load_saved(zs_model)
        scale = float(meta.logit_scale)  # the loss temperature the runs use
        sets = load_sets(splits, zeroshot, meta.template)
        teacher = score(zeroshot, sets, scale)
        results["zero-shot"][protocol] = {"alpha=0": metrics(sets, protocol, teacher, teacher)}
        check = evaluate_model(zs_model, splits, out / f"{protocol}-zero-shot-eval", zs_config, protocol)
        check.pop("val")  # the validation score the method table's selection uses; this bench scores test only
        mine = {k: v for k, v in results["zero-shot"][protocol]["alpha=0"].items() if k in check}
        if any(abs(check[k] - mine[k]) > 1e-9 for k in check):
            raise RuntimeError(f"{protocol}: zero-shot top-1 differs from clipcite evaluate: {mine} vs {check}")
        zs_state = zeroshot.model.state_dict()
        for key, eta, over in variants(etas):
            config = load_config(CONFIG, [*base, f"train.eta={eta}", f"train.vld_over={over}", "train.alpha=1.0"])
            started = time.perf_counter()
            trained = out / f"{protocol}-{over}-eta{eta:g}-alpha1-model"
            finetune.run(str(splits), str(trained), config, cache_uri=str(cache))
            entry = {"vld": vld_curve(trained, config.train.epochs)}
            loaded, _ = load_saved(trained)
            ft_state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
            for alpha in alphas:
                # the weights finetune saves with train.alpha=alpha (clipcite.training.loop.fit's last step)
                loaded.model.load_state_dict(average_weights(ft_state, zs_state, alpha))
                entry[f"alpha={alpha:g}"] = metrics(sets, protocol, teacher, score(loaded, sets, scale))
            results.setdefault(key, {})[protocol] = entry
            log.info(
                "seed %d %s %-16s %.0fs %s",
                seed,
                protocol,
                key,
                time.perf_counter() - started,
                json.dumps(entry, default=lambda v: round(v, 3)),
            )
    return results


def cell(entry: dict | None, digits: int = 1) -> str:
    if not entry:
        return "-"
    return f"{entry['mean']:.{digits}f}" + (f" ± {entry['std']:.{digits}f}" if entry["n"] > 1 else "")


def tables_markdown(summary: dict, seeds: list[int], command: str, alphas: list[float]) -> str:
    lines = [
        f"Toy world, L_VLD sweep, {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); top-1 %, mean ± std over "
        "seeds (HM: HM of mean Base and mean New, ± the spread of the per-seed HMs); KL: mean KL(teacher || model) "
        "on the test images over the eval set's class prompts.",
        "",
        f"Command: `{command}`",
        "",
    ]
    protocols = set(summary["zero-shot"])
    if "b2n" in protocols:
        lines += _b2n_table(summary, alphas)
    if "xd" in protocols:
        lines += _xd_table(summary, alphas)
    return "\n".join(lines) + "\n"


def _b2n_table(summary: dict, alphas: list[float]) -> list[str]:
    lines = ["Base-to-new (photo; 16 shots of 24 base classes):", ""]
    heads = []
    for alpha in alphas:
        heads += [f"Base a={alpha:g}", f"New a={alpha:g}", f"HM a={alpha:g}", f"KL base/new a={alpha:g}"]
    lines += ["| L_VLD | vld first/last | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for key in ordered(summary):
        entry = summary[key]
        b2n = entry["b2n"]
        cells = [key, _vld(b2n)]
        for alpha in alphas:
            e = b2n.get(f"alpha={alpha:g}") or b2n.get("alpha=0")
            kls = f"{cell(e['kl']['photo-base'], 3)} / {cell(e['kl']['photo-new'], 3)}"
            cells += [cell(e["base"]), cell(e["new"]), cell(e["hm"]), kls]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _xd_table(summary: dict, alphas: list[float]) -> list[str]:
    lines = ["Cross-domain (16 shots of all 48 photo classes; shifted = mean of sketch, noisy, painting):", ""]
    heads = []
    for alpha in alphas:
        heads += [f"{d} a={alpha:g}" for d in [*DOMAINS, "shifted"]] + [f"KL photo/shifted a={alpha:g}"]
    lines += ["| L_VLD | vld first/last | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for key in ordered(summary):
        entry = summary[key]
        xd = entry["xd"]
        cells = [key, _vld(xd)]
        for alpha in alphas:
            e = xd.get(f"alpha={alpha:g}") or xd.get("alpha=0")
            cells += [cell(e[d]) for d in [*DOMAINS, "shifted"]]
            cells.append(f"{cell(e['kl']['photo'], 3)} / {cell(e['kl']['shifted'], 3)}")
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _vld(entry: dict) -> str:
    vld = entry.get("vld") or {}
    return f"{vld['first']['mean']:.3f} / {vld['last']['mean']:.3f}" if "first" in vld else "-"


def plot(summary: dict, etas: list[float], alphas: list[float], path: Path) -> None:
    panels = [("b2n", "hm", "base-to-new HM (photo)"), ("b2n", "new", "New (photo)"), ("xd", "shifted", "shifted")]
    panels = [p for p in panels if p[0] in summary["zero-shot"]]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8), squeeze=False)
    axes = axes[0]
    for ax, (protocol, metric, title) in zip(axes, panels, strict=True):
        for over in OVERS:
            for alpha in alphas:
                xs, ys, es = [], [], []
                for eta in sorted(etas):
                    key = "eta=0" if eta == 0.0 else f"{over} eta={eta:g}"
                    e = summary.get(key, {}).get(protocol, {}).get(f"alpha={alpha:g}")
                    if e:
                        xs.append(eta)
                        ys.append(e[metric]["mean"])
                        es.append(e[metric]["std"])
                style = "-" if over == "batch" else "--"
                ax.errorbar(xs, ys, yerr=es, fmt=style + "o", capsize=2, label=f"{over}, alpha {alpha:g}")
        zs = summary["zero-shot"][protocol]["alpha=0"][metric]["mean"]
        ax.axhline(zs, color="grey", lw=1, ls=":", label="zero-shot")
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xticks(sorted(etas), [f"{e:g}" for e in sorted(etas)])
        ax.set_xlabel("eta (L_VLD weight)")
        ax.set_title(title)
    axes[0].set_ylabel("top-1 (%)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Toy world: L_VLD weight, vld_over batch (solid) / classes (dashed), alpha 1 and 0.5")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/vld", help="folder for the table, every run and the results")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds to average over")
    parser.add_argument("--etas", type=float, nargs="+", default=ETAS, help="L_VLD weights (train.eta) to sweep")
    parser.add_argument("--alphas", type=float, nargs="+", default=ALPHAS, help="weight-space ensemble alphas")
    parser.add_argument("--quick", action="store_true", help="one seed, 5 epochs")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_HELP}; etas {SMOKE_ETAS}")
    parser.add_argument(
        "--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS), help="protocols to run"
    )
    add_overrides_argument(parser)  # applied to every run
    args = parser.parse_args(argv)
    if args.smoke:
        args.etas = SMOKE_ETAS
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    seeds = args.seeds[:1] if args.quick or args.smoke else args.seeds
    extra = (["train.epochs=5"] if args.quick else []) + (SMOKE_OVERRIDES if args.smoke else []) + args.overrides
    settings = {"etas": args.etas, "alphas": args.alphas, "extra": extra, "protocols": args.protocols}
    out = Path(args.out)
    started = time.perf_counter()
    table = out / "table"
    write_world(str(table), seed=1, counts=SMOKE_COUNTS if args.smoke else None)  # always rewritten, as in methods
    default_etas = SMOKE_ETAS if args.smoke else ETAS
    command = (
        "python -m bench.toyworld_vld"
        + (" --quick" if args.quick else "")
        + (" --smoke" if args.smoke else "")
        + (f" --seeds {' '.join(map(str, seeds))}" if seeds != [1, 2, 3] and not (args.quick or args.smoke) else "")
        + (f" --protocols {' '.join(args.protocols)}" if args.protocols != list(PROTOCOLS) else "")
        + (f" --etas {' '.join(f'{e:g}' for e in args.etas)}" if args.etas != default_etas else "")
        + "".join(f" --set {o}" for o in args.overrides)
    )
    runs, done = [], []
    for seed in seeds:
        saved = out / f"seed{seed}" / "vld.json"
        if saved.is_file() and json.loads(saved.read_text())["settings"] == settings:
            log.info("seed %d: reusing %s", seed, saved)
            runs.append(json.loads(saved.read_text())["results"])
        else:
            runs.append(run_seed(table, out / f"seed{seed}", seed, extra, args))
            saved.write_text(json.dumps({"settings": settings, "results": runs[-1]}, indent=1))
        done.append(seed)
        # the summary so far, after every seed: a run stopped early still leaves its finished seeds
        summary = {key: aggregate([r[key] for r in runs]) for key in runs[0]}
        text = tables_markdown(summary, done, command, args.alphas)
        (out / "toyworld_vld.md").write_text(text)
        (out / "toyworld_vld.json").write_text(json.dumps({"seeds": done, "runs": runs, "summary": summary}, indent=1))
        plot(summary, args.etas, args.alphas, out / "toyworld_vld.png")
        log.info("seed %d done, %.0fs so far", seed, time.perf_counter() - started)
    print(text)
    print(f"total {time.perf_counter() - started:.0f}s; wrote {out}/toyworld_vld.{{md,json,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
