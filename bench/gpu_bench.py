"""GPU throughput of the CITE step and of evaluation; what ``bench/gpu.sh`` runs.

    python -m bench.gpu_bench                       # ViT-B-16-quickgelu, random init, bf16, on cuda
    python -m bench.gpu_bench --tiny                # the same code on CPU with the tiny model (what the test runs)

Prints, per training batch size: the CITE step's images/s with the cached teacher (the teacher's features are a
lookup, as in training with ``teacher.mode=cache``: no teacher forward), peak GPU memory, MFU against the given
peak (790 TFLOP/s bf16 dense for an H200) at the issue's 158 GFLOPs per training image (ViT-B/16 only), and at the
FLOPs counted in one step (torch's FlopCounterMode; for the tiny model only this one means anything). The step is
fit's: batch_losses, the non-finite check, the gradient norm, AdamW (fused on CUDA). Images are device-resident
tensors, so the number is the step's, not the loader's. Then evaluation at batch 256: on pre-decoded device tensors
(the model alone), through the real input path (clipcite.evaluation.predict.predict over synthetic 500x375 JPEGs: PIL
decode, open_clip's eval transform, collate, pinned copies, ``--workers`` processes), and that input path alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from bench.cite_step import cite_step, input_side, synthetic_prompts
from bench.synthetic import jpeg_rows
from clipcite.data.crops import model_input
from clipcite.data.loading import (
    EvalDataset,
    loader_options,
)
from clipcite.evaluation.predict import predict
from clipcite.model.clip import load_model
from clipcite.model.precision import autocast

ROOT = Path(__file__).resolve().parents[1]

TRAIN_GFLOPS = 158.0  # per training image, CITE step
EVAL_GFLOPS = 35.1  # per eval image, ViT-B/16 at 224 px
TINY = [
    "--arch", "clipcite-tiny", "--device", "cpu", "--precision", "fp32", "--train-batches", "4", "8",
    "--eval-batch", "16", "--steps", "2", "--warmup", "1", "--classes", "10", "--images", "48", "--unique", "6",
    "--jpeg-size", "80", "60", "--workers", "0",
]  # fmt: skip


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def train_throughput(args, batch: int) -> dict:
    """Images/s of fit's CITE step at ``batch`` with cached teacher features, peak memory, FLOPs counted."""
    device = args.device
    step = cite_step(load_model(args.arch, "", init_seed=0, device=device), batch, args.classes, device,
                     args.precision, seed=batch)  # fmt: skip
    _reset_peak(device)
    elapsed = _timed(step, args.warmup, args.steps, device)
    peak = _peak_gib(device)
    with FlopCounterMode(display=False) as counter:
        step()
    ips = batch * args.steps / elapsed
    return {
        "batch": batch,
        "images_per_s": ips,
        "peak_gib": peak,
        "mfu": ips * TRAIN_GFLOPS * 1e9 / (args.peak_tflops * 1e12),
        "mfu_counted": ips * counter.get_total_flops() / batch / (args.peak_tflops * 1e12),
        "counted_gflops_per_image": counter.get_total_flops() / batch / 1e9,
    }


def _timed(run, warmup: int, steps: int, device: str) -> float:
    """Seconds for ``steps`` calls of ``run`` after ``warmup`` untimed ones, the device synchronised around them."""
    for _ in range(warmup):
        run()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        run()
    _sync(device)
    return time.perf_counter() - started


@torch.no_grad()
def eval_throughput(args) -> dict:
    """Evaluation images/s at ``--eval-batch``: the model on device tensors, the real input path, the path alone."""
    device, batch = args.device, args.eval_batch
    loaded = load_model(args.arch, "", init_seed=0, device=device)
    model = loaded.model.to(device).eval()
    size = input_side(loaded)
    prompts = synthetic_prompts(args.classes)
    context = autocast(device, args.precision)
    with context:
        text = model.encode_text(loaded.tokenizer(prompts).to(device), normalize=True).float()
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)

    def forward() -> torch.Tensor:
        with context:
            features = model.encode_image(images, normalize=True).float()
        return (features @ text.T).argmax(dim=1)

    _reset_peak(device)
    tensors_ips = batch * args.steps / _timed(forward, args.warmup, args.steps, device)
    peak = _peak_gib(device)
    with FlopCounterMode(display=False) as counter:
        forward()
    counted = counter.get_total_flops() / batch

    # the batch normalisation on the device must give the CPU's numbers bit for bit (true division, not a multiply)
    sample = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    on_cpu = model_input(sample, loaded.preprocess_cfg, "cpu")
    same_normalisation = torch.equal(model_input(sample, loaded.preprocess_cfg, device).cpu(), on_cpu)
    print(f"[gpu_bench] normalisation on {device} equals the CPU's bit for bit: {same_normalisation}", flush=True)

    width, height = args.jpeg_size
    unique = jpeg_rows(args.unique, width=width, height=height, classes=args.classes)
    rows = [{**unique[i % len(unique)], "id": f"row{i:07d}"} for i in range(args.images)]  # same decode cost
    print(f"[gpu_bench] eval on device tensors: {tensors_ips:,.0f} images/s", flush=True)
    path_ips = real_ips = error = None
    try:  # worker processes pass batches through /dev/shm: a small one fails here, not the numbers above
        dataset = EvalDataset(rows, loaded.preprocess_cfg)
        loader = DataLoader(dataset, batch_size=batch, **loader_options(args.workers, 2, device, persistent=False))
        started = time.perf_counter()
        count = 0
        for index, pixels, _ in loader:  # to the device and normalised, as predict's batches are
            model_input(pixels, loaded.preprocess_cfg, device)
            count += len(index)
        _sync(device)
        path_ips = count / (time.perf_counter() - started)
        print(f"[gpu_bench] eval input path alone: {path_ips:,.0f} images/s", flush=True)
        started = time.perf_counter()
        pred, _ = predict(loaded, rows, prompts, batch_size=batch, device=device, num_workers=args.workers,
                          precision=args.precision)  # fmt: skip
        _sync(device)
        real_ips = len(pred) / (time.perf_counter() - started)
    except (RuntimeError, OSError) as e:
        error = f"{type(e).__name__}: {e}"
        print(f"[gpu_bench] the real input path failed: {error}", flush=True)
    return {
        "batch": batch,
        "tensors_images_per_s": tensors_ips,
        "real_path_images_per_s": real_ips,
        "input_path_alone_images_per_s": path_ips,
        "peak_gib": peak,
        "mfu": tensors_ips * EVAL_GFLOPS * 1e9 / (args.peak_tflops * 1e12),
        "counted_gflops_per_image": counted / 1e9,
        "mfu_counted": tensors_ips * counted / (args.peak_tflops * 1e12),
        "images": args.images,
        "workers": args.workers,
        "real_path_error": error,
        "normalisation_identical_to_cpu": same_normalisation,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU, the tiny model, a few tiny images (a smoke run)")
    parser.add_argument("--arch", default="ViT-B-16-quickgelu")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--train-batches", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--eval-batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--classes", type=int, default=1000, help="class prompts (ImageNet-shaped: 1000)")
    parser.add_argument("--images", type=int, default=20480, help="eval images through the real input path")
    parser.add_argument("--unique", type=int, default=512, help="distinct JPEGs among them (decode cost is equal)")
    parser.add_argument("--jpeg-size", type=int, nargs=2, default=[500, 375], metavar=("W", "H"))
    parser.add_argument("--workers", type=int, default=14, help="eval DataLoader workers")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="dense bf16 peak of the GPU (H200: 790)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.tiny:
        args = parser.parse_args([*TINY, *(argv or [])])
    return args


def run(args: argparse.Namespace) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or --tiny for the CPU smoke run")
    machine = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    )
    results = {
        "machine": machine,
        "arch": args.arch,
        "precision": args.precision,
        "train": [],
    }
    for batch in args.train_batches:  # printed as they come: a later failure keeps what was measured
        results["train"].append(train_throughput(args, batch))
        print(f"[gpu_bench] CITE step, batch {batch}: {results['train'][-1]['images_per_s']:,.0f} images/s", flush=True)
    results["eval"] = eval_throughput(args)
    return results


def report(results: dict) -> str:
    def gib(value):
        return "n/a" if value is None else f"{value:.1f} GiB"

    def rate(value):
        return "failed" if value is None else f"{value:,.0f} images/s"

    lines = [f"{results['arch']}, random init, {results['precision']}, {results['machine']}", ""]
    lines.append(
        "CITE step, cached teacher: batch | images/s | peak memory | MFU at 158 GFLOPs/img | counted GFLOPs/img"
    )
    for r in results["train"]:
        lines.append(
            f"  {r['batch']} | {r['images_per_s']:,.0f} | {gib(r['peak_gib'])} | {100 * r['mfu']:.1f}% "
            f"| {r['counted_gflops_per_image']:.3g} (MFU {100 * r['mfu_counted']:.2g}%)"
        )
    e = results["eval"]
    lines += [
        "",
        f"evaluation, batch {e['batch']}: device tensors {e['tensors_images_per_s']:,.0f} images/s (MFU "
        f"{100 * e['mfu']:.1f}% at 35.1 GFLOPs/img; counted {e['counted_gflops_per_image']:.3g} GFLOPs/img, MFU "
        f"{100 * e['mfu_counted']:.2g}%; peak {gib(e['peak_gib'])})",
        f"  real input path on {e['images']} JPEGs with {e['workers']} workers: {rate(e['real_path_images_per_s'])}"
        f"; that input path alone: {rate(e['input_path_alone_images_per_s'])}"
        + (f" ({e['real_path_error']})" if e["real_path_error"] else ""),
    ]
    at64 = [r["images_per_s"] for r in results["train"] if r["batch"] == 64]
    if at64:
        lines.append(f"target CITE at batch 64 >= 2,000 images/s: {at64[0]:,.0f}")
    lines.append(
        f"target eval >= 11,000 images/s: {rate(e['tensors_images_per_s'])} (tensors), "
        f"{rate(e['real_path_images_per_s'])} (real input path)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    results = run(args)
    print(report(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
