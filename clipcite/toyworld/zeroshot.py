"""Zero-shot accuracy of the toy world's CLIP per domain: ``python -m clipcite.toyworld.zeroshot``."""

from __future__ import annotations

import argparse
import logging

from tqdm import tqdm

from clipcite.data.prompts import prompts_for
from clipcite.data.splits import base_new_classes
from clipcite.evaluation.metrics import top1
from clipcite.evaluation.predict import predict
from clipcite.model.clip import load_model
from clipcite.toyworld.generate import TEMPLATE
from clipcite.toyworld.world import DOMAINS, classnames, iter_rows

CHECKPOINT = "clipcite:toyworld/toyclip.safetensors"
ARCH = "toyclip"


def zeroshot_accuracy(
    checkpoint: str = CHECKPOINT,
    *,
    seed: int = 1,
    per_class: int = 20,
    domains: tuple[str, ...] = DOMAINS,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Top-1 over all 48 classes per domain, plus base and new halves (each among its own classes). One progress
    bar for the whole job (a step per domain and set), none per set."""
    loaded = load_model(ARCH, checkpoint)
    names = classnames()
    base, new = base_new_classes(range(len(names)))
    result = {}
    bar = tqdm(total=3 * len(domains), desc="zero-shot", unit="set", disable=not progress)
    for domain in domains:
        bar.set_postfix(domain=domain)
        rows = list(iter_rows(seed, {"test": per_class}, (domain,)))
        pred, target = predict(loaded, rows, prompts_for(TEMPLATE, names), progress=False)
        bar.update()
        class_acc = [float((pred[target == c] == c).float().mean()) * 100 for c in range(len(names))]
        entry = {
            "all": top1(pred, target),
            "worst_class": min(class_acc),
            "worst_name": names[class_acc.index(min(class_acc))],
        }
        for half, keep in (("base", base), ("new", new)):
            sub = [r for r in rows if r["label"] in keep]
            sub = [{**r, "label": keep.index(r["label"])} for r in sub]
            p, t = predict(loaded, sub, prompts_for(TEMPLATE, [names[c] for c in keep]), progress=False)
            bar.update()
            entry[half] = top1(p, t)
        result[domain] = entry
    bar.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Zero-shot top-1 of the toy world's CLIP per domain.")
    parser.add_argument("--checkpoint", default=CHECKPOINT)
    parser.add_argument("--seed", type=int, default=1, help="seed of the test images (1 = the default table's)")
    parser.add_argument("--per-class", type=int, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = zeroshot_accuracy(args.checkpoint, seed=args.seed, per_class=args.per_class)
    print(
        f"zero-shot top-1 (%) of {args.checkpoint}, {args.per_class} test images per class and domain; "
        f"chance: all {100 / 48:.1f}, base/new {100 / 24:.1f}"
    )
    print(f"{'domain':<10} {'all 48':>7} {'base 24':>8} {'new 24':>7}   worst class (of 48)")
    for domain, entry in result.items():
        print(
            f"{domain:<10} {entry['all']:7.1f} {entry['base']:8.1f} {entry['new']:7.1f}   "
            f"{entry['worst_class']:.0f} ({entry['worst_name']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
