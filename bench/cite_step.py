"""fit's CITE step on synthetic device tensors, for the throughput benches (bench/gpu_bench.py,
bench/teacher_cache.py): batch_losses, the non-finite check, the gradient norm and AdamW, with the teacher's image
features either looked up in a cache (``teacher.mode=cache``) or computed by the frozen teacher (``online``)
through CITE's own ``teacher_images`` (clipcite/training/methods/cite.py)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch

from clipcite.model.clip import LoadedModel
from clipcite.model.precision import autocast
from clipcite.train_params import FitParams
from clipcite.training.loop import _grad_norm, adamw, nonfinite_terms
from clipcite.training.methods.cite import batch_losses, param_groups, teacher_images


def input_side(loaded: LoadedModel) -> int:
    size = loaded.preprocess_cfg["size"]
    return int(size[0] if isinstance(size, list | tuple) else size)


def synthetic_prompts(classes: int) -> list[str]:
    return [f"a photo of a class {i} thing." for i in range(classes)]


def cite_step(
    student: LoadedModel,
    batch: int,
    classes: int,
    device: str,
    precision: str,
    teacher: LoadedModel | None = None,
    seed: int = 0,
) -> Callable[[], None]:
    """One training step of ``student`` per call; the teacher runs online when given, else its features are cached."""
    model = student.model.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    tokens = student.tokenizer(synthetic_prompts(classes)).to(device)
    dim = int(student.model_cfg["embed_dim"])
    teacher_text = torch.nn.functional.normalize(torch.randn(classes, dim, generator=generator), dim=-1).to(device)
    head = torch.nn.Parameter(teacher_text.clone())
    optimizer = adamw(param_groups(model, head, 0.1), 1e-5, device)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    params = FitParams(batch_size=batch, precision=precision, logit_scale=100.0)
    side = input_side(student)
    images = torch.randn(batch, 3, side, side, generator=generator).to(device)
    labels = torch.randint(0, classes, (batch,), generator=generator).to(device)
    features = torch.nn.functional.normalize(torch.randn(1, batch, dim, generator=generator), dim=-1)
    cache = None if teacher is not None else SimpleNamespace(image=features)  # [epochs=1, N=batch, D] on the host
    if teacher is not None:
        teacher.model.to(device)
    index = torch.arange(batch)
    context = autocast(device, precision)

    def step() -> None:
        with context:
            teacher_image = teacher_images(cache, teacher, 0, index, images)
            losses = batch_losses(model, images, labels, tokens, head, teacher_text, teacher_image, params, 100.0)
        optimizer.zero_grad(set_to_none=True)
        if nonfinite_terms(losses) is None:
            losses["total"].backward()
            _grad_norm(trainable, 0.0)
            optimizer.step()

    return step
