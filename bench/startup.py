"""Start-up cost of each step's module, beside ``import torch`` (run by hand).

Each import runs in a fresh interpreter, ``--repeat`` times, alternating; the table gives the median wall time and
peak RSS, and whether torch / open_clip / mlflow got imported. The CPU-only steps (snapshot, sample-splits,
register) must start without torch and open_clip: <= 1.5 s and <= 300 MB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

MODULES = [
    "torch",
    "clipcite.steps.snapshot",
    "clipcite.steps.sample_splits",
    "clipcite.steps.register",
    "clipcite.steps.run_config",
    "clipcite.steps.finetune",
]
HEAVY = ("torch", "open_clip", "mlflow", "pandas", "matplotlib")
PROBE = """
import json, resource, sys, time
started = time.perf_counter()
import {module}
seconds = time.perf_counter() - started
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"s": seconds, "rss": rss, "loaded": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def probe(module: str) -> dict:
    """One fresh interpreter importing ``module``: seconds, peak RSS (MB), heavy modules it pulled in."""
    code = PROBE.format(module=module, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


SMOKE_MODULES = ["torch", "clipcite.steps.sample_splits"]  # --smoke: torch to compare with, one light step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help=f"seconds: one run of {', '.join(SMOKE_MODULES)}")
    args = parser.parse_args(argv)
    modules, repeat = (SMOKE_MODULES, 1) if args.smoke else (MODULES, args.repeat)
    runs: dict[str, list[dict]] = {m: [] for m in modules}
    for _ in range(repeat):
        for module in modules:
            runs[module].append(probe(module))
    torch_s = statistics.median(r["s"] for r in runs["torch"])
    print(f"{'import':32} {'s (median)':>10} {'x torch':>8} {'peak RSS MB':>12}  heavy modules loaded")
    for module, results in runs.items():
        seconds = statistics.median(r["s"] for r in results)
        rss = statistics.median(r["rss"] for r in results)
        loaded = ", ".join(results[-1]["loaded"]) or "-"
        print(f"{module:32} {seconds:10.2f} {seconds / torch_s:8.2f} {rss:12.0f}  {loaded}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
