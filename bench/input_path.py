"""The input path beside the model, on synthetic 500x375 JPEGs, CPU.

    OMP_NUM_THREADS=1 python -m bench.input_path                   # the paper_vitb16 preset's workers (8 and 8)
    OMP_NUM_THREADS=1 python -m bench.input_path --config default  # the toy world's (0 and 0)

1. The training and the eval input paths alone (decode, crop, normalise, collate through the run's one DataLoader,
   with the preset's workers): images/s and images per CPU-second ("per core": this process's and its workers' CPU
   time, so a shared machine's load does not count against it). Training runs 5 epochs with the decode-once cache
   (train.decode_cache_mb, as fit uses it when the pixels fit) and without it. Both paths run twice, side by side:
   as the loaders ship them now (uint8 pixels, normalised per batch by the step) and as they did before (each
   worker made float32 items: open_clip's whole eval transform, the train crop's old numpy formula, kept here
   literally); the batches are checked equal.
2. The model's own images/s on the same machine: toyclip and ViT-B-16-quickgelu (random init), the eval forward and
   fit's CITE step (cached teacher; bench/cite_step.py).
3. evaluate's images/s (clipcite.evaluation.predict.predict: batches, workers) against a naive loop: per image, PIL
decode,    the same eval transform, a batch-of-1 forward and argmax. The predictions are checked equal. Then the
evaluate    step's case: it scores K models on each set (fine-tuned, zero-shot, champion; here K random inits of the
same    arch, so one eval view) with clipcite.evaluation.predict.predict_models, one pass over the images for all K,
against    the naive loop run once per model and against predict once per model (what evaluate did before). images/s
there    counts the set's images (each scored by K models). For the small archs the eval set is 4,096 images by default:
   16 batches of the preset's 256, so the workers reach the steady state an ImageNet-size set (50,000 images) runs
   in; a set of one batch keeps one worker busy and the others idle (``--eval-images 256`` shows that case).
   ViT-B-16-quickgelu's comparisons use ``--naive-images`` (48) images: one partial batch, as its CPU forward is slow.
4. JPEG decode alone, PIL vs torchvision.io.decode_jpeg, and whether their pixels are identical.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from bench.cite_step import cite_step, input_side, synthetic_prompts  # noqa: E402
from bench.synthetic import jpeg_rows  # noqa: E402
from clipcite.config import load_config  # noqa: E402
from clipcite.data.crops import eval_view, model_input  # noqa: E402
from clipcite.data.images import decode_image  # noqa: E402
from clipcite.data.loading import (  # noqa: E402  # noqa: E402
    CropDataset,
    EpochBatches,
    EvalDataset,
    crop_boxes,
    decode_all,
    image_size,
    loader_options,
)
from clipcite.evaluation.predict import predict, predict_models  # noqa: E402
from clipcite.model.clip import load_model  # noqa: E402


class Clock:
    """Wall seconds and CPU seconds of this process plus its finished children (DataLoader workers)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu

    @staticmethod
    def _cpu() -> float:
        me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def rate(images: int, clock: Clock) -> str:
    return f"{images / clock.wall:8.1f} images/s, {images / clock.cpu:7.1f} per CPU-second"


def old_to_tensor(image: Image.Image, mean, std) -> torch.Tensor:
    """The train crop's float tensor as clipcite made it in the workers before (kept here literally)."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    return (tensor - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


class OldCropItems(CropDataset):
    """CropDataset's items as they were: each worker cut, resized and normalised its crop to float32."""

    def __getitem__(self, item):
        epoch, i = item if isinstance(item, tuple) else (self.epoch, item)
        row = self.rows[i]
        image = Image.fromarray(self.decoded[i]) if self.decoded is not None else decode_image(row["image"], "")
        top, left, h, w = (int(v) for v in self.boxes[epoch, i])
        size = self.cfg["size"][0] if isinstance(self.cfg["size"], list | tuple) else self.cfg["size"]
        crop = image.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
        return i, old_to_tensor(crop, self.cfg["mean"], self.cfg["std"]), int(row["label"])


class OldEvalItems(EvalDataset):
    """EvalDataset's items as they were: open_clip's whole eval transform (ToTensor, Normalize) in each worker."""

    def __getitem__(self, i):
        from open_clip.transform import PreprocessCfg, image_transform_v2

        if not hasattr(self, "transform"):
            self.transform = image_transform_v2(PreprocessCfg(**self.cfg), is_train=False)
        row = self.rows[i]
        return i, self.transform(decode_image(row["image"], "")), int(row["label"])


def consume(loader, cfg: dict, floats: bool) -> torch.Tensor:
    """Iterate one pass as a step does (uint8 batches are normalised here); returns the last batch's model input."""
    images = torch.empty(0)
    for _, x, _ in loader:
        images = x if floats else model_input(x, cfg, "cpu")
    return images


def train_path(rows, cfg, workers: int, prefetch: int, epochs: int, decode_mb: float, floats: bool = False):
    """fit's input path: crop boxes, the decode-once cache when it fits, one loader for every epoch. Returns the clock
    and the last batch."""
    with Clock() as clock:
        boxes = crop_boxes(rows, 1, epochs)
        decoded = decode_all(rows, [image_size(r) for r in rows], decode_mb) if decode_mb > 0 else None
        dataset = (OldCropItems if floats else CropDataset)(rows, cfg, boxes, decoded=decoded)
        sampler = EpochBatches(len(rows), 32, seed=1)
        loader = DataLoader(dataset, batch_sampler=sampler,
                            **loader_options(workers, prefetch, "cpu"))  # fmt: skip
        for epoch in range(epochs):
            sampler.epoch = epoch
            last = consume(loader, cfg, floats)
        del loader  # workers exit and are reaped: their CPU time is counted
    return clock, last


def eval_path(rows, cfg, workers: int, batch: int, floats: bool = False):
    with Clock() as clock:
        dataset = (OldEvalItems if floats else EvalDataset)(rows, cfg)
        loader = DataLoader(dataset, batch_size=batch,
                            **loader_options(workers, 2, "cpu", persistent=False))  # fmt: skip
        last = consume(loader, cfg, floats)
        del loader
    return clock, last


def side_by_side(label: str, images: int, run) -> None:
    """The path as it is (uint8) and as it was (float items), alternating, two runs each (the lower CPU time of
    each is printed); the last batches must be equal."""
    clocks: dict[bool, list[Clock]] = {False: [], True: []}
    batches = {}
    for floats in (False, True, False, True):
        clock, batches[floats] = run(floats)
        clocks[floats].append(clock)
    same = "identical" if torch.equal(batches[False], batches[True]) else "DIFFERENT"
    now, before = (min(c, key=lambda c: c.cpu) for c in (clocks[False], clocks[True]))
    print(f"{label}: uint8 batches {rate(images, now)}; float items (before) {rate(images, before)}; "
          f"per CPU-second {before.cpu / now.cpu:.2f}x, wall {before.wall / now.wall:.2f}x; last batch {same}",
          flush=True)  # fmt: skip


@torch.no_grad()
def naive_predict(loaded, rows, prompts) -> torch.Tensor:
    """The loop a first version would write: one image at a time, PIL decode, transform, forward."""
    model = loaded.model.eval()
    text = model.encode_text(loaded.tokenizer(prompts), normalize=True)
    preds = []
    for row in rows:
        image = Image.open(io.BytesIO(row["image"])).convert("RGB")
        features = model.encode_image(eval_view(image, loaded.preprocess_cfg)[None], normalize=True)
        preds.append(int((features @ text.T).argmax()))
    return torch.tensor(preds)


def model_rates(arch: str, train_batch: int, eval_batch: int, steps: int) -> tuple[Clock, int, Clock, int]:
    loaded = load_model(arch, "", init_seed=0)
    side = input_side(loaded)
    images = torch.randn(eval_batch, 3, side, side)
    model = loaded.model.eval()
    with torch.no_grad():
        model.encode_image(images)
        with Clock() as forward:
            for _ in range(steps):
                model.encode_image(images, normalize=True)
    step = cite_step(load_model(arch, "", init_seed=0), train_batch, 100, "cpu", "fp32")
    step()
    with Clock() as train:
        for _ in range(steps):
            step()
    return forward, eval_batch * steps, train, train_batch * steps


def decode_compare(rows) -> str:
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [r["image"] for r in rows]
    with Clock() as pil:
        arrays = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in data]
    with Clock() as tv:
        tensors = [decode_jpeg(torch.frombuffer(bytearray(d), dtype=torch.uint8), mode=ImageReadMode.RGB) for d in data]
    same = sum(np.array_equal(a, t.permute(1, 2, 0).numpy()) for a, t in zip(arrays, tensors, strict=True))
    return (
        f"decode alone: PIL {rate(len(data), pil)}; torchvision.io.decode_jpeg {rate(len(data), tv)}; "
        f"identical pixels {same}/{len(data)}"
    )


SMOKE = {"config": "default", "train_images": 4, "eval_images": 8, "epochs": 1, "archs": ["toyclip"],
         "naive_images": 4, "workers": 0, "models": [2]}  # fmt: skip
SMOKE_HELP = "seconds: 4 train and 8 eval images, 1 epoch, toyclip, no workers (the numbers mean nothing)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="paper_vitb16", help="preset whose workers and batch sizes are used")
    parser.add_argument("--train-images", type=int, default=96)
    parser.add_argument("--eval-images", type=int, default=4096, help="eval set size (16 batches of 256)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--archs", nargs="+", default=["toyclip", "ViT-B-16-quickgelu"])
    parser.add_argument("--naive-images", type=int, default=48, help="images for the naive loop vs predict")
    parser.add_argument("--workers", type=int, help="train and eval workers instead of the preset's")
    parser.add_argument(
        "--models", type=int, nargs="+", default=[2, 3], help="models evaluate scores per set (fine-tuned, ...)"
    )
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE)
    config = load_config(args.config)
    train_workers, eval_workers, eval_batch = config.train.num_workers, config.eval.num_workers, config.eval.batch_size
    if args.workers is not None:
        train_workers = eval_workers = args.workers
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s), load average {load[0]:.1f} "
          f"{load[1]:.1f} {load[2]:.1f}; preset {args.config}: train workers {train_workers}, eval workers "
          f"{eval_workers}, eval batch {eval_batch}", flush=True)  # fmt: skip
    train_rows = jpeg_rows(args.train_images, seed=1)
    eval_rows = jpeg_rows(args.eval_images, seed=2)
    mean_kb = sum(len(r["image"]) for r in eval_rows) / len(eval_rows) / 1024
    print(f"synthetic JPEGs: 500x375, {mean_kb:.0f} KB on average")
    cfg = load_model("ViT-B-16-quickgelu", "").preprocess_cfg  # 224 px, bicubic, CLIP's mean/std

    images, prefetch = args.train_images * args.epochs, config.train.prefetch_factor
    for budget, how in ((1024.0, "decode-once cache"), (0.0, "decoding every epoch")):

        def train(floats: bool, budget: float = budget):
            return train_path(train_rows, cfg, train_workers, prefetch, args.epochs, budget, floats)

        side_by_side(f"train input path, {args.epochs} epochs, {how}", images, train)
    side_by_side("eval input path", args.eval_images,
                 lambda floats: eval_path(eval_rows, cfg, eval_workers, eval_batch, floats))  # fmt: skip
    print(decode_compare(eval_rows[:64]), flush=True)

    for arch in args.archs:
        small = arch != "ViT-B-16-quickgelu"
        forward, n_fwd, train, n_train = model_rates(arch, 32 if small else 4, 64 if small else 8, 3 if small else 1)
        print(f"{arch} (random init) eval forward: {rate(n_fwd, forward)}; CITE step: {rate(n_train, train)}")
        loaded = load_model(arch, "", init_seed=0)
        rows = eval_rows[: args.naive_images if not small else args.eval_images]
        prompts = synthetic_prompts(10)
        with Clock() as naive:
            naive_pred = naive_predict(loaded, rows, prompts)
        with Clock() as batched:
            pred, _ = predict(loaded, rows, prompts, batch_size=eval_batch, num_workers=eval_workers)
        same = "identical" if torch.equal(pred, naive_pred) else f"{int((pred != naive_pred).sum())} differ"
        print(f"{arch} evaluate over {len(rows)} images: predict {rate(len(rows), batched)}; naive per-image loop "
              f"{rate(len(rows), naive)}; speed-up {naive.wall / batched.wall:.2f}x wall, "
              f"{naive.cpu / batched.cpu:.2f}x CPU; predictions {same}", flush=True)  # fmt: skip
        for k in args.models:
            print(models_case(arch, rows, prompts, k, eval_batch, eval_workers), flush=True)
    return 0


def models_case(arch: str, rows, prompts, k: int, batch: int, workers: int) -> str:
    """The evaluate step's K models on one set: one pass for all, predict per model, the naive loop per model."""
    names = ["finetuned", "zeroshot", "champion", *[f"model{i}" for i in range(3, k)]][:k]
    models = {name: load_model(arch, "", init_seed=seed) for seed, name in enumerate(names)}
    with Clock() as naive:
        naive_preds = {name: naive_predict(m, rows, prompts) for name, m in models.items()}
    with Clock() as separate:
        alone = {
            name: predict(m, rows, prompts, batch_size=batch, num_workers=workers)[0] for name, m in models.items()
        }
    with Clock() as joint:
        preds, _ = predict_models(models, rows, prompts, batch_size=batch, num_workers=workers)
    differ = sum(int((preds[n] != naive_preds[n]).sum() + (preds[n] != alone[n]).sum()) for n in models)
    return (
        f"{arch} evaluate's {k} models ({', '.join(names)}: {k} random inits of {arch}, one eval view) over "
        f"{len(rows)} images: one pass {rate(len(rows), joint)}; predict once per model {rate(len(rows), separate)}; "
        f"naive loop once per model {rate(len(rows), naive)}; one pass vs naive {naive.wall / joint.wall:.2f}x wall, "
        f"{naive.cpu / joint.cpu:.2f}x CPU; vs predict per model {separate.wall / joint.wall:.2f}x wall, "
        f"{separate.cpu / joint.cpu:.2f}x CPU; predictions {'identical' if not differ else f'{differ} differ'}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
