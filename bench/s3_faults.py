"""The chain's S3 paths under heavier S3 faults than the test's: sample-splits -> cache-teacher -> finetune ->
evaluate on ``s3://`` URIs through ``tests/support/faultproxy.py`` in front of ``moto_server``, at several fault
fractions and seeds, each compared object by object with a clean run.

    python -m bench.s3_faults                                  # fractions 0.1 0.2 0.3, seeds 1 2
    python -m bench.s3_faults --fractions 0.3 --seeds 1 2 3 4

Tiny random-weight model and the toy world (photo, sketch), as in the tests. Prints one row per run: requests,
faults injected by kind, faulted requests retried, whether every output object equals the clean run's (timings in
``train_summary.json`` aside), and seconds. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parents[1]

from clipcite.config import load_config  # noqa: E402
from clipcite.toyworld.generate import write_world  # noqa: E402
from tests.support.faultproxy import FaultProxy  # noqa: E402
from tests.support.s3_chain import bucket_contents, run_chain  # noqa: E402
from tests.support.servers import moto_server, s3_environment  # noqa: E402

TINY = ["model.arch=clipcite-tiny", "model.pretrained=", "device=cpu", "splits.shots=2", "train.epochs=1"]
CONFIG = load_config(overrides=[*TINY, "train.batch_size=8"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default=str(ROOT / "runs" / "s3-faults"))
    parser.add_argument("--smoke", action="store_true", help="a minute: fraction 0.2, seed 1, a small photo world")
    args = parser.parse_args(argv)
    counts, domains = {"train": 3, "val": 1, "test": 2}, ("photo", "sketch")
    if args.smoke:
        args.fractions, args.seeds, counts, domains = [0.2], [1], {"train": 2, "val": 1, "test": 1}, ("photo",)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with moto_server() as endpoint:
        os.environ.update(s3_environment(endpoint))
        client = boto3.client("s3", endpoint_url=endpoint)
        runs = [("clean", 0.0, 0)] + [(f"f{f}-s{s}", f, s) for f in args.fractions for s in args.seeds]
        for name, _, _ in runs:
            bucket = f"bench-{name.replace('.', '')}"
            client.create_bucket(Bucket=bucket)
            write_world(f"s3://{bucket}/table", seed=1, counts=counts, domains=domains)
        run_chain("bench-clean", CONFIG)
        clean = bucket_contents(endpoint, "bench-clean", skip_prefix="table/")
        for name, fraction, seed in runs[1:]:
            bucket = f"bench-{name.replace('.', '')}"
            started = time.perf_counter()
            error = ""
            with FaultProxy(endpoint, fraction=fraction, seed=seed) as proxy:
                os.environ["AWS_ENDPOINT_URL"] = proxy.url
                try:
                    run_chain(bucket, CONFIG)
                except Exception as e:  # a run that gave up: recorded, the others still run
                    error = f"{type(e).__name__}: {str(e)[:300]}"
            os.environ["AWS_ENDPOINT_URL"] = endpoint
            seconds = time.perf_counter() - started
            faulty = bucket_contents(endpoint, bucket, skip_prefix="table/")
            identical = not error and faulty == clean
            row = {"fraction": fraction, "seed": seed, **proxy.summary(), "injected": proxy.injected}
            row.update(identical=identical, seconds=round(seconds, 1), error=error, objects=len(faulty))
            rows.append(row)
            print(
                f"fraction {fraction:.2f} seed {seed}: {row['requests']} requests, {row['injected']} faults "
                f"{row['faults']}, {row['retried']} retried, outputs identical: {identical}, {seconds:.1f} s"
                + (f", FAILED: {error}" if error else "")
            )
    (out / "s3_faults.json").write_text(json.dumps(rows, indent=2))
    total = sum(r["injected"] for r in rows)
    print(
        f"{len(rows)} runs, {total} faults injected, {sum(r['retried'] for r in rows)} retried; "
        f"{sum(r['identical'] for r in rows)} of {len(rows)} runs wrote outputs identical to the clean run"
    )
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
