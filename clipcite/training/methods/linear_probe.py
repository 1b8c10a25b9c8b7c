"""CLAP, a zero-shot-initialised linear probe with a class-adaptive constraint (Silva-Rodriguez, Hajimiri, Ben Ayed,
Dolz, "A Closer Look at the Few-Shot Adaptation of Large Vision-Language Models", CVPR 2024; docs/method.md
"Added methods").

The class weights W [C, D] start at the zero-shot text features t_c and train on the frozen model's image features
of the training crops (the teacher cache's: no image is decoded, no encoder runs):

    L(W) = CE(s * cos(v_i, w_c)) + penalty * (1/C) sum_c lambda_c ||w_c - t_c||^2,
    lambda_c = mean over class c's crops of the zero-shot softmax probability of class c (fixed before training).

The encoders do not change. What is saved is the zero-shot model plus ``class_head.safetensors``: the trained W,
normalised, one row per training prompt, which evaluation and serving use in place of those prompts' text features
(:func:`clipcite.model.clip.class_features`). Any other class (base-to-new's new classes, another template) keeps its
zero-shot text feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipcite.model.clip import head_bytes
from clipcite.records import HEAD_FILE
from clipcite.training.losses import similarity_logits
from clipcite.training.methods.common import Batch, Saved, Setup, Trainer
from clipcite.training.teacher_cache import build_cache


def multipliers(features: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """CLAP's lambda_c: the zero-shot model's mean softmax probability of class c over class c's samples.
    [M, D] features, [M] labels, [C, D] text -> [C] (0 for a class without samples)."""
    probs = similarity_logits(features, text, scale).softmax(dim=-1)
    onehot = F.one_hot(labels, len(text)).to(probs.dtype)
    counts = onehot.sum(0)
    return (probs * onehot).sum(0) / counts.clamp(min=1)


def anchor_penalty(weights: torch.Tensor, zeroshot: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """(1/C) sum_c lambda_c ||w_c - t_c||^2 (CLAP's constraint, its code's mean over classes). [C, D] x2, [C]."""
    return (lambdas * (weights - zeroshot).pow(2).sum(-1)).mean()


def trainer(setup: Setup) -> Trainer:
    """W trains alone (AdamW, ``train.probe.lr``, no weight decay) on the cached crops' features; epoch e of the
    probe reads the crops of cached epoch e mod E. Without a cache the frozen student computes them once here."""
    params, probe = setup.params, setup.params.probe
    cache = setup.cache
    if cache is None:  # teacher.mode=online or no cache given: the same features, computed in memory
        cache = build_cache(
            setup.student,
            setup.rows,
            setup.prompts,
            seed=setup.seed,
            epochs=params.epochs,
            crop_scale=params.crop_scale,
            crop_ratio=params.crop_ratio,
            device=setup.device,
            precision=params.precision,
            source=setup.source,
        )
    for p in setup.student.model.parameters():
        p.requires_grad_(False)
    features = cache.image.to(setup.device)  # [E, N, D]
    zeroshot = setup.teacher_text.detach()
    flat_labels = setup.labels.to(setup.device).repeat(features.shape[0])
    lambdas = multipliers(features.flatten(0, 1), flat_labels, zeroshot, setup.scale)
    head = torch.nn.Parameter(zeroshot.clone())
    groups = [{"params": [head], "weight_decay": 0.0, "lr": probe.lr}]

    def loss(batch: Batch) -> dict[str, torch.Tensor]:
        image = features[batch.epoch % features.shape[0], batch.index.to(setup.device)]
        ce = F.cross_entropy(similarity_logits(image, head, setup.scale), batch.labels)
        anchor = anchor_penalty(head, zeroshot, lambdas)
        return {"ce": ce, "anchor": anchor, "total": ce + probe.penalty * anchor}

    def finish() -> Saved:
        trained = F.normalize(head.detach().float(), dim=-1).cpu()
        info = {
            "class_head": {"file": HEAD_FILE, "classes": len(setup.prompts), "penalty": probe.penalty},
            "note": f"A linear probe (CLAP) on the frozen encoders: the {len(setup.prompts)} trained class prompts "
            "use the probe's class weights; every other class (base-to-new's new classes, another template) keeps "
            "its zero-shot text embedding.",
        }
        return Saved(dict(setup.zeroshot_state), {HEAD_FILE: head_bytes(trained, setup.prompts)}, info)

    epochs = probe.epochs or params.epochs
    steps = epochs * setup.steps_per_epoch
    return Trainer(groups, loss, finish, torch.nn.Module(), head, epochs, steps, 1.0, needs_images=False)
