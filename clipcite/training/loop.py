"""The fine-tuning loop: every method in one readable function (method.md "Training recipe").

Methods: ``clipcite.train_params.REGISTRY``, one module each in clipcite/training/methods. A method says what it
trains, its loss per batch and what it saves; the loop here is the same for all. Randomness is derived from the seed
alone: crops from (seed, id, epoch), batch order from (seed, epoch), so a run resumed from an epoch checkpoint ends
with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from clipcite.data.crops import model_input
from clipcite.data.loading import CropDataset, EpochBatches, crop_boxes, decode_all, image_size, loader_options
from clipcite.model.clip import LoadedModel, encode_texts
from clipcite.model.nonfinite import NonFiniteError
from clipcite.model.precision import autocast as precision_autocast
from clipcite.train_params import FitParams
from clipcite.training import distributed, methods
from clipcite.training.checkpoints import checkpoint_due, fingerprint_of, resume, save_checkpoint
from clipcite.training.methods.common import Batch, Setup
from clipcite.training.teacher_cache import TeacherCache

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    state_dict: dict[str, torch.Tensor]  # the inference weights (alpha-averaged for the methods that average)
    steps: int
    epochs: int
    images_per_second: float
    logit_scale: float  # the temperature the losses used
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient (train.on_nonfinite=skip)
    files: dict[str, bytes] = field(default_factory=dict)  # written beside the weights (LoRA adapter, class head)
    meta: dict = field(default_factory=dict)  # the method's entries for clipcite.json
    trainable_parameters: int = 0  # what the optimiser updated
    alpha: float = 1.0  # the weight-space ensemble the saved weights use (1.0 = none)
    zeroshot_state: dict[str, torch.Tensor] = field(default_factory=dict)  # the weights before any step (CPU)


LogFn = Callable[[dict[str, float], int], None]


def fit(
    student: LoadedModel,
    rows: list[dict],
    prompts: list[str],
    params: FitParams,
    *,
    seed: int,
    device: str = "cpu",
    teacher: LoadedModel | None = None,
    cache: TeacherCache | None = None,
    checkpoint_dir: Path | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    log_fn: LogFn | None = None,
    source: str = "",
) -> FitResult:
    """Train ``student`` on ``rows`` (train split: id, image/path, label) whose classes are ``prompts`` with the
    method ``params.method`` names (clipcite/training/methods).

    At the epoch ends the checkpoint policy picks (``train.checkpoint_every_*``; default every epoch) the state goes
    to ``checkpoint_dir`` (and ``on_checkpoint(path)`` is called, e.g. to copy it somewhere durable); a run started
    again with the same inputs resumes after the last saved epoch. One DataLoader serves every epoch.
    """
    params.validate()
    model = student.model.to(device)
    zeroshot_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    scale = resolve_logit_scale(params.logit_scale, model)
    if params.epochs == 0:  # no epoch to run: the pre-trained weights, whatever the method
        return FitResult(zeroshot_state, 0, 0, 0.0, scale, alpha=params.alpha, zeroshot_state=zeroshot_state)
    if params.needs_teacher() and cache is None and teacher is None:
        raise ValueError("L_VLD needs the teacher: pass a teacher model or a teacher cache (or set eta=0)")

    teacher_text = _teacher_text(student, prompts, device, teacher, cache)
    tokens = student.tokenizer(prompts).to(device)
    labels_all = torch.tensor([int(r["label"]) for r in rows])
    if int(labels_all.max()) >= len(prompts) or int(labels_all.min()) < 0:
        raise ValueError(f"{source}labels must lie in 0..{len(prompts) - 1} (one prompt per class)")
    steps_per_epoch = len(EpochBatches(len(rows), params.batch_size, seed))
    setup = Setup(
        student=student,
        rows=rows,
        prompts=prompts,
        tokens=tokens,
        teacher_text=teacher_text,
        labels=labels_all,
        zeroshot_state=zeroshot_state,
        params=params,
        scale=scale,
        steps_per_epoch=steps_per_epoch,
        seed=seed,
        device=device,
        cache=cache,
        teacher=teacher,
        source=source,
    )
    trainer = methods.module(params.method).trainer(setup)
    if trainer.steps == 0:  # a method that trains nothing (zeroshot): no loader, no optimiser, what it saves
        return _result(trainer, 0, 0.0, 0, scale, zeroshot_state, trained=False)
    loader, batches = _train_loader(student, rows, params, trainer.epochs, seed, device, cache, source, trainer)
    optimizer = adamw(trainer.groups, params.lr, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(params.warmup_steps, trainer.steps))
    fingerprint = fingerprint_of(student.identity, params, seed, [r["id"] for r in rows], prompts)
    start_epoch = resume(checkpoint_dir, fingerprint, trainer.state, trainer.head, optimizer, scheduler)
    autocast = precision_autocast(device, params.precision)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    step, seen, skipped, started = start_epoch * steps_per_epoch, 0, 0, time.perf_counter()
    last_save = started

    # one bar for the run: CLIP-LoRA's 500 x K iterations are hundreds of short epochs
    progress = tqdm(total=trainer.steps, initial=step, desc="training", unit="step", leave=False)
    for epoch in range(start_epoch, trainer.epochs):
        model.train()
        batches.epoch = epoch  # the sampler runs in this process: persistent workers get (epoch, i) items
        progress.set_postfix_str(f"epoch {epoch + 1}/{trainer.epochs}")
        for index, images, labels in loader:
            if step >= trainer.steps:  # a method counting iterations (CLIP-LoRA) may stop inside an epoch
                break
            if images is not None:
                images = model_input(images, student.preprocess_cfg, device)
            labels = labels.to(device, non_blocking=True)
            with autocast:
                losses = trainer.loss(Batch(epoch, index, images, labels))
            where = f"{source}step {step + 1} (epoch {epoch + 1}/{trainer.epochs})"
            grad_norm, stepped = _optimizer_step(losses, optimizer, trainable, params, where, skipped)
            skipped += not stepped
            lr = scheduler.get_last_lr()[0]  # the rate this step used
            scheduler.step()
            step += 1
            seen += len(index)
            progress.update()
            if log_fn is not None:
                metrics = {k: float(v.detach()) for k, v in losses.items()}
                log_fn({**metrics, "grad_norm": grad_norm, "lr": lr, "epoch": epoch + 1}, step)
        if (
            checkpoint_dir is None
            or not distributed.is_main()
            or not checkpoint_due(params, epoch + 1, time.perf_counter() - last_save)
        ):
            continue
        last_save = time.perf_counter()
        optimizer_state = optimizer if params.checkpoint_optimizer else None
        saved = save_checkpoint(
            checkpoint_dir, fingerprint, epoch + 1, trainer.state, trainer.head, optimizer_state, scheduler
        )
        if saved is not None and on_checkpoint is not None:
            on_checkpoint(saved)

    progress.close()
    throughput = distributed.total(seen) / max(time.perf_counter() - started, 1e-9)
    log.info("trained %d step(s) (%d epoch(s)), %.1f images/s", step, trainer.epochs, throughput)
    return _result(trainer, step, throughput, skipped, scale, zeroshot_state, trained=True)


def _result(
    trainer, steps: int, throughput: float, skipped: int, scale: float, zeroshot_state: dict, *, trained: bool
) -> FitResult:
    """What the method saves, with the loop's counts (a method that trained nothing reports no epochs and no
    trainable parameters)."""
    out = trainer.finish()
    return FitResult(
        state_dict=out.state_dict,
        steps=steps,
        epochs=trainer.epochs if trained else 0,
        images_per_second=throughput,
        logit_scale=scale,
        skipped_steps=skipped,
        files=out.files,
        meta=out.meta,
        trainable_parameters=trainer.trainable_parameters() if trained else 0,
        alpha=trainer.alpha,
        zeroshot_state=zeroshot_state,
    )


def _teacher_text(student: LoadedModel, prompts: list[str], device: str, teacher, cache) -> torch.Tensor:
    """The frozen teacher's class-prompt features (they initialise the head W): from the cache, the teacher, or
    the student before any step (it is the pre-trained model then)."""
    if cache is not None:
        return cache.text.to(device)
    reference = teacher.model.to(device).eval() if teacher is not None else student.model
    return encode_texts(reference, student.tokenizer, prompts, device=device)


def _train_loader(
    student: LoadedModel, rows, params: FitParams, epochs: int, seed: int, device: str, cache, source: str, trainer
):
    """The run's one DataLoader over replayable crops (the cache's boxes when the cache covers the ``epochs``),
    with the images decoded once when they fit ``train.decode_cache_mb``, and its epoch-ordered batch sampler. A
    method that trains on cached features gets the sampler's batches without any image read."""
    batches = EpochBatches(len(rows), params.batch_size, seed)
    if not trainer.needs_images:
        return _FeatureBatches(batches, torch.tensor([int(r["label"]) for r in rows])), batches
    cached = cache is not None and cache.boxes.shape[0] >= epochs
    needs_sizes = not cached or params.decode_cache_mb > 0  # one header read per image serves both
    sizes = [image_size(r, source) for r in rows] if needs_sizes else []
    boxes = (
        cache.boxes
        if cached
        else crop_boxes(rows, seed, epochs, params.crop_scale, params.crop_ratio, source, sizes=sizes)
    )
    decoded = decode_all(rows, sizes, params.decode_cache_mb, source) if params.decode_cache_mb > 0 else None
    dataset = CropDataset(rows, student.preprocess_cfg, boxes, source, decoded=decoded)
    loader = DataLoader(
        dataset,
        batch_sampler=distributed.RankBatches(batches),
        **loader_options(params.num_workers, params.prefetch_factor, device),
    )
    return loader, batches


class _FeatureBatches:
    """(index, None, labels) per batch of the sampler's current epoch: batches without images (every rank takes
    the whole batch; a feature method's step is cheap and the same on every rank)."""

    def __init__(self, batches: EpochBatches, labels: torch.Tensor):
        self.batches, self.labels = batches, labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, None, torch.Tensor]]:
        for batch in self.batches:
            index = torch.tensor([i for _, i in batch])
            yield index, None, self.labels[index]

    def __len__(self) -> int:
        return len(self.batches)


def _optimizer_step(losses, optimizer, trainable, params: FitParams, where: str, skipped: int) -> tuple[float, bool]:
    """Backward and AdamW step when every loss term and the gradient norm are finite; else stop with
    :class:`NonFiniteError` or skip the step (``train.on_nonfinite``). Returns (gradient norm, stepped)."""
    optimizer.zero_grad(set_to_none=True)
    problem = nonfinite_terms(losses)
    grad_norm = float("nan")
    if problem is None:
        losses["total"].backward()
        grad_norm = _grad_norm(trainable, params.grad_clip)
        if not math.isfinite(grad_norm):
            problem = f"the gradient norm is {grad_norm}"
    if problem is None:
        optimizer.step()
        return grad_norm, True
    if params.on_nonfinite == "stop":
        raise NonFiniteError(
            f"{where}: {problem}; training stopped and no model was written. Lower train.lr, check "
            "the data, or set train.on_nonfinite=skip to skip such steps"
        )
    log.warning("%s: %s; step skipped (%d so far)", where, problem, skipped + 1)
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, False


def nonfinite_terms(losses: dict[str, torch.Tensor]) -> str | None:
    """``None`` when every loss term is finite, else which are not (e.g. "loss term(s) scl=nan, total=nan")."""
    bad = {name: float(v.detach()) for name, v in losses.items() if not bool(torch.isfinite(v.detach()).all())}
    return "loss term(s) " + ", ".join(f"{k}={v}" for k, v in bad.items()) if bad else None


def _grad_norm(parameters: list[torch.Tensor], clip: float) -> float:
    """The total gradient norm (clipped to ``clip`` when > 0; the norm before clipping is returned)."""
    if clip > 0:
        return float(torch.nn.utils.clip_grad_norm_(parameters, clip))
    grads = [p.grad for p in parameters if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def resolve_logit_scale(setting: float | str, model: torch.nn.Module) -> float:
    """The fixed temperature s of every loss term (method.md "Notation").

    ``"checkpoint"``: the model's own learned ``exp(logit_scale)`` (100 for OpenAI's CLIP, the paper's value); a
    number overrides it. A model without a ``logit_scale`` falls back to CLIP's 100.
    """
    if setting != "checkpoint":
        return float(setting)
    learned = getattr(model, "logit_scale", None)
    if not isinstance(learned, torch.Tensor):
        log.info("the model has no logit_scale: using CLIP's 100 as the loss temperature")
        return 100.0
    scale = float(learned.detach().float().exp())
    log.info("loss temperature: the checkpoint's own logit scale %.4g", scale)
    return scale


def _cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def adamw(param_groups: list[dict], lr: float, device: str) -> torch.optim.AdamW:
    """AdamW's fastest exact path for the device: one fused kernel on CUDA, the multi-tensor (foreach) path
    elsewhere, instead of PyTorch's per-parameter loop on CPU."""
    if str(device).startswith("cuda"):
        return torch.optim.AdamW(param_groups, lr=lr, fused=True)
    return torch.optim.AdamW(param_groups, lr=lr, foreach=True)
