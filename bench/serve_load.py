"""Serving under load: the registered champion behind ``mlflow models serve`` on 127.0.0.1, a bounded load of
concurrent clients, then malformed requests that must get a 4xx while the server keeps serving.

    python -m bench.serve_load                                   # trains and registers a toy champion first
    python -m bench.serve_load --model-uri models:/clipcite@champion --tracking-uri sqlite:///$PWD/mlflow.db
    python -m bench.serve_load --requests 200 --clients 4        # a quick look

Without ``--model-uri`` it fine-tunes the toy world's ``toyclip`` (2 shots, 1 epoch, photo domain) and registers it
as ``serve-bench@champion`` in ``<out>/mlflow.db`` (reused on later runs). Each request carries 1-8 base64 PNGs
(seeded draw from 64 rendered toy-world images) in ``dataframe_split`` form; every answer is checked (status 200,
one prediction per image, a label from the trained classes). Prints p50/p95/p99 latency, requests/s and images/s,
and writes them to ``<out>/serve_load.json``. Loopback only; the load stops at ``--requests`` or ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

NAME = "serve-bench"


def champion(out: Path, tracking_uri: str) -> str:
    """``models:/serve-bench@champion`` in ``tracking_uri``, trained and registered first if it is not there."""
    from clipcite.config import load_config
    from clipcite.steps import cache_teacher, finetune, sample_splits
    from clipcite.toyworld.generate import write_world
    from clipcite.tracking import registry, runs, served_model

    client = runs.connect(tracking_uri)
    if registry.champion(client, NAME) is not None:
        return f"models:/{NAME}@champion"
    config = load_config("default", ["splits.shots=2", "train.epochs=1", "device=cpu"])
    data = out / "data"
    write_world(str(data / "table"), seed=1, counts={"train": 3, "val": 1, "test": 2}, domains=("photo",))
    sample_splits.run(str(data / "table"), str(data / "splits"), config)
    cache_teacher.run(str(data / "splits"), str(data / "teacher"), config)
    finetune.run(str(data / "splits"), str(data / "model"), config, cache_uri=str(data / "teacher"))
    run_id = runs.open_pipeline_run(tracking_uri, "serve-bench", run_name="serve-bench")
    with runs.step_run(tracking_uri, run_id, "register", system_metrics=False) as step:
        logged = served_model.log_classifier(step, data / "model", example_images=[png(pool(1)[0])])
        version = registry.register_version(client, NAME, logged, run_id=step.run_id, pipeline_run_id=run_id, tags={})
    registry.set_champion(client, NAME, version.version)
    return f"models:/{NAME}@champion"


def pool(n: int, seed: int = 0) -> list[np.ndarray]:
    from clipcite.toyworld.world import classnames, render

    rng = np.random.default_rng(seed)
    names = classnames()
    return [render(names[i % len(names)], "photo", rng, (0.5, 0.6)) for i in range(n)]


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels: signature, IHDR, an empty IDAT and IEND."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def body(images: list[str], params: dict | None = None, column: str = "image") -> dict:
    payload: dict = {"dataframe_split": {"columns": [column], "data": [[x] for x in images]}}
    if params:
        payload["params"] = params
    return payload


def malformed(good: str) -> list[tuple[str, dict]]:
    return [
        ("not an image", body([b64(b"this is plain text, not an image")])),
        ("empty string", body([""])),
        ("30000x30000 PNG header", body([b64(png_header(30000, 30000))])),
        ("missing image column", body([good], column="picture")),
        ("10,000 labels", body([good], {"labels": [f"label {i}" for i in range(10_000)]})),
    ]


def serve(model_uri: str, tracking_uri: str, port: int, workers: int, log: Path) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # its uvicorn
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri, "PATH": path}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited: {log.read_text()[-3000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                return process
        except requests.ConnectionError:
            pass
        time.sleep(1)
    raise RuntimeError(f"mlflow models serve did not answer /ping in 600 s: {log.read_text()[-3000:]}")


def load(url: str, images: list[str], labels: set[str] | None, args) -> dict:
    """``args.requests`` requests from ``args.clients`` threads, each of 1..``args.max_images`` images; every
    predicted label must be among ``labels`` (None: any string)."""
    draw = random.Random(args.seed)
    sizes = [draw.randint(1, args.max_images) for _ in range(args.requests)]
    plan = [[draw.randrange(len(images)) for _ in range(size)] for size in sizes]
    lock, latencies, errors, next_index = threading.Lock(), [], [], iter(range(len(plan)))
    deadline = time.monotonic() + args.max_seconds

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < deadline:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            chosen = plan[i]
            started = time.perf_counter()
            try:
                answer = session.post(url, json=body([images[j] for j in chosen]), timeout=120)
                elapsed = time.perf_counter() - started
                predictions = answer.json().get("predictions") if answer.status_code == 200 else None
                ok = predictions is not None and len(predictions) == len(chosen)
                ok = ok and all(p["label"] in labels if labels else isinstance(p["label"], str) for p in predictions)
                problem = None if ok else f"request {i}: HTTP {answer.status_code} {answer.text[:300]}"
            except requests.RequestException as e:
                elapsed, problem = time.perf_counter() - started, f"request {i}: {type(e).__name__}: {e}"
            with lock:
                latencies.append((elapsed, len(chosen)))
                if problem:
                    errors.append(problem)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    seconds = sorted(t for t, _ in latencies)
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return {
        "requests": len(latencies),
        "planned": len(plan),
        "clients": args.clients,
        "images": sum(n for _, n in latencies),
        "errors": len(errors),
        "first_errors": errors[:5],
        "wall_s": round(wall, 2),
        "p50_ms": round(1000 * cuts[49], 1),
        "p95_ms": round(1000 * cuts[94], 1),
        "p99_ms": round(1000 * cuts[98], 1),
        "requests_per_s": round(len(latencies) / wall, 2),
        "images_per_s": round(sum(n for _, n in latencies) / wall, 2),
    }


def check_malformed(url: str, good: str) -> list[dict]:
    results = []
    for name, payload in malformed(good):
        started = time.perf_counter()
        answer = requests.post(url, json=payload, timeout=300)
        try:
            message = answer.json().get("message", "")
        except ValueError:
            message = answer.text
        after = requests.post(url, json=body([good]), timeout=120)  # the server keeps serving
        results.append(
            {
                "request": name,
                "status": answer.status_code,
                "message": message[:200],
                "seconds": round(time.perf_counter() - started, 2),
                "next_request_status": after.status_code,
            }
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "serve-bench"))
    parser.add_argument("--model-uri", help="a models:/ URI to serve (default: train and register a toy champion)")
    parser.add_argument("--tracking-uri", help="default: sqlite:///<out>/mlflow.db")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-images", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--max-seconds", type=float, default=1800, help="stop sending after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--url", help="a running server's /invocations URL: nothing trained or started, any label")
    parser.add_argument("--smoke", action="store_true", help="seconds: 8 requests of 1-2 images from 2 clients")
    args = parser.parse_args(argv)
    if args.smoke:
        args.requests, args.clients, args.max_images = 8, 2, 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = args.tracking_uri or f"sqlite:///{out.absolute() / 'mlflow.db'}"
    from clipcite.toyworld.world import classnames
    from tests.support.servers import free_port

    process, url, labels = None, args.url, None
    if not url:
        model_uri = args.model_uri or champion(out, tracking_uri)
        port = args.port or free_port()
        process = serve(model_uri, tracking_uri, port, args.workers, out / "server.log")
        url, labels = f"http://127.0.0.1:{port}/invocations", set(classnames())
    try:
        images = [b64(png(a)) for a in pool(64, seed=args.seed)]
        bad = check_malformed(url, images[0])
        for row in bad:
            print(f"malformed: {row['request']:<24} -> HTTP {row['status']} in {row['seconds']} s: {row['message']}")
        result = load(url, images, labels, args)
        result["malformed"] = bad
        result["alive_after"] = requests.get(url.rsplit("/", 1)[0] + "/ping", timeout=5).status_code == 200
    finally:
        if process is not None:
            os.killpg(process.pid, signal.SIGTERM)  # the server and its workers
            process.wait(timeout=60)
    model_uri = args.model_uri or ("" if args.url else f"models:/{NAME}@champion")
    result.update(model_uri=model_uri, workers=args.workers, cpus=os.cpu_count(), date=time.strftime("%Y-%m-%d"))
    (out / "serve_load.json").write_text(json.dumps(result, indent=2))
    print(
        f"{result['requests']} requests ({result['images']} images) from {args.clients} clients in "
        f"{result['wall_s']} s: {result['errors']} errors; latency p50 {result['p50_ms']} ms, p95 {result['p95_ms']} "
        f"ms, p99 {result['p99_ms']} ms; {result['requests_per_s']} requests/s, {result['images_per_s']} images/s"
    )
    for problem in result["first_errors"]:
        print(f"error: {problem}")
    failed = result["errors"] or any(not (400 <= r["status"] < 500) or r["next_request_status"] != 200 for r in bad)
    return 1 if failed or result["requests"] < result["planned"] else 0


if __name__ == "__main__":
    sys.exit(main())
