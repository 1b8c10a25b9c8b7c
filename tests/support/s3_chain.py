"""The chain's S3 paths, shared by the S3 fault test and ``bench/s3_faults.py``: run sample-splits -> cache-teacher
-> finetune -> evaluate under ``s3://<bucket>``, then read back every object for a byte-wise comparison."""

from __future__ import annotations

import json

import boto3

from clipcite.config import Config
from clipcite.steps import cache_teacher, evaluate, finetune, sample_splits

VARYING = {"train_summary.json": ("seconds", "images_per_second")}  # wall-clock numbers differ between runs


def run_chain(bucket: str, config: Config) -> None:
    """The four steps on the table at ``s3://<bucket>/table``."""
    root = f"s3://{bucket}"
    sample_splits.run(f"{root}/table", f"{root}/splits", config)
    cache_teacher.run(f"{root}/splits", f"{root}/teacher", config)
    finetune.run(f"{root}/splits", f"{root}/model", config, cache_uri=f"{root}/teacher")
    evaluate.run(f"{root}/model", f"{root}/splits", f"{root}/report", config)


def bucket_contents(endpoint: str, bucket: str, skip_prefix: str = "") -> dict[str, bytes]:
    """Every object of ``bucket`` read straight from the store (not through a proxy), timing fields dropped and the
    bucket's name replaced, so two runs in two buckets compare byte for byte."""
    client = boto3.client("s3", endpoint_url=endpoint)
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            if skip_prefix and obj["Key"].startswith(skip_prefix):
                continue
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            name = obj["Key"].rsplit("/", 1)[-1]
            if name in VARYING:
                body = json.dumps({k: v for k, v in json.loads(body).items() if k not in VARYING[name]}).encode()
            out[obj["Key"]] = body.replace(bucket.encode(), b"<bucket>")
    return out
