"""What each torchrun rank does in tests/unit/training/test_distributed.py (importable without pytest, so ranks start
fast)."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch

from clipcite.config import load_config
from clipcite.evaluation.predict import predict
from clipcite.model.clip import load_model
from clipcite.training import distributed
from clipcite.training.loop import FitParams, fit
from clipcite.training.teacher_cache import build_cache

TINY = ["model.arch=clipcite-tiny", "model.pretrained=", "device=cpu"]
# batches of 5 over 12 images: 5, 5, 2 per epoch, split 3+2, 3+2, 1+1 over two ranks (uneven parts, padded gather)
CITE = FitParams(method="cite", epochs=3, batch_size=5, lr=1e-4)
FLYP = dataclasses.replace(CITE, method="flyp", epochs=2)
STOP_EPOCH = 3  # the interrupted runs stop at the first step of this epoch, after the checkpoint of the one before


@contextlib.contextmanager
def float64():
    """Training compared in float64: one rank's float32 features and gradient sums round differently from one
    process's (2e-6 relative on the gradients), and AdamW's normalised steps carry that into the later losses
    beyond 1e-5 in the small L_VLD term; float64 leaves only the algorithm to compare."""
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(torch.float32)


class Interrupt(Exception):
    """Stands for the pod being killed."""


GRID = "train.alpha_grid=[0.0, 0.5, 1.0]"  # the steps' finetune chooses alpha on validation (scored over the ranks)


def step_config(*overrides: str):
    batches = ["train.batch_size=5", "teacher.batch_size=5", "eval.batch_size=4"]  # several batches per rank
    return load_config(overrides=[*TINY, "train.epochs=1", *batches, *overrides])


def train(rows, prompts, params, cache=None, checkpoint_dir=None, stop=False):
    """(final weights, [(step, metrics), ...]); ``stop`` raises :class:`Interrupt` on every rank at epoch 3."""
    logged = []

    def record(metrics, step):
        if stop and metrics["epoch"] == STOP_EPOCH:
            raise Interrupt
        logged.append((step, metrics))

    result = fit(
        load_model("clipcite-tiny", ""),
        rows,
        prompts,
        params,
        seed=1,
        cache=cache,
        checkpoint_dir=checkpoint_dir,
        log_fn=record,
    )
    return result.state_dict, logged


def make_cache(rows, prompts, epochs=CITE.epochs):
    return build_cache(
        load_model("clipcite-tiny", ""),
        rows,
        prompts,
        seed=1,
        epochs=epochs,
        crop_scale=CITE.crop_scale,
        crop_ratio=CITE.crop_ratio,
        batch_size=5,
    )


def in_float64(cache):
    """The cache's features (computed in float32) as float64, for training in float64."""
    return dataclasses.replace(cache, text=cache.text.double(), image=cache.image.double())


GRADIENT_CASES = ("cite", "cite:classes", "flyp", "ce")  # method[:train.vld_over]


def first_step_gradients(prompts, case: str) -> dict:
    """The gradient of every trainable tensor (the head W too) after one backward of a fixed batch of 5 images, of
    which this rank takes its part: under ranks, after DDP's average."""
    from clipcite.training.methods.cite import batch_losses, param_groups

    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(5, 3, 32, 32, generator=generator), torch.tensor([0, 1, 0, 2, 1])
    teacher = torch.nn.functional.normalize(torch.randn(5, 64, generator=generator), dim=-1)
    loaded = load_model("clipcite-tiny", "")
    text = torch.nn.functional.normalize(torch.randn(len(prompts), 64, generator=generator), dim=-1)
    head = torch.nn.Parameter(text.clone())
    param_groups(loaded.model, head, 0.1)  # fixes logit_scale as fit does, before DDP registers its hooks
    method, _, over = case.partition(":")
    params = dataclasses.replace(CITE, method=method, vld_over=over or "batch")
    towers = distributed.data_parallel(loaded.model, uses_text=method != "ce")
    part = next(iter(distributed.RankBatches([list(range(5))])))
    teacher_part = teacher[part] if method == "cite" else None
    tokens = loaded.tokenizer(prompts)
    losses = batch_losses(towers, images[part], labels[part], tokens, head, text, teacher_part, params, 10.0)
    losses["total"].backward()
    grads = {name: p.grad.clone() for name, p in loaded.model.named_parameters() if p.grad is not None}
    return grads if head.grad is None else {**grads, "head": head.grad.clone()}  # FLYP has no head


def rank_jobs(rows, prompts, cache, work: str) -> dict:
    """Everything the two-rank side of the tests computes, in one torchrun launch (ranks are slow to start)."""
    from clipcite.steps import cache_teacher, evaluate, finetune

    work_dir = Path(work)
    with distributed.process_group("cpu"):
        out: dict = {"world_size": distributed.world_size()}
        with float64():
            out["gradients"] = {case: first_step_gradients(prompts, case) for case in GRADIENT_CASES}
            out["cite"] = train(rows, prompts, CITE, cache=cache)
            out["flyp"] = train(rows, prompts, FLYP)
            with contextlib.suppress(Interrupt):
                train(rows, prompts, CITE, cache=cache, checkpoint_dir=work_dir / "killed-two", stop=True)
            resumed = train(rows, prompts, CITE, cache=cache, checkpoint_dir=work_dir / "killed-one")
            out["resumed_from_one"] = resumed
        out["cache"] = make_cache(rows, prompts).image
        out["predict"] = predict(load_model("clipcite-tiny", ""), rows, prompts, batch_size=5)
        splits, steps = str(work_dir / "splits"), work_dir / "two"
        cache_teacher.run(splits, str(steps / "teacher"), step_config())
        finetune.run(splits, str(steps / "model"), step_config(GRID), cache_uri=str(steps / "teacher"))
        evaluate.run(str(steps / "model"), splits, str(steps / "eval"), step_config())
    return out


@distributed.relaunch_in_ranks(local_only=("log_fn",))
def echo_in_ranks(value, *, log_fn=None, added: str = "") -> dict:
    """What a relaunched step's ranks were called with (tests/unit/training/test_distributed.py)."""
    with distributed.process_group("cpu"):
        return {"world_size": distributed.world_size(), "value": value, "added": added, "log_fn": log_fn}
