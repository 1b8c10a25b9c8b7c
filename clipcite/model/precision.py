"""Autocast: one rule for training, the teacher cache and evaluation (method.md "Training recipe": bf16 autocast on
GPU is a decision, fp32 on CPU; ``train.precision`` sets it for every step that runs a model)."""

from __future__ import annotations

import torch

from clipcite.train_params import PRECISIONS


def resolve_precision(device: str, precision: str = "auto") -> str:
    """``bf16`` or ``fp32``: what ``precision`` means on ``device`` (auto = bf16 on CUDA, fp32 elsewhere)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if str(device).startswith("cuda") else "fp32"
    return precision


def autocast(device: str, precision: str = "auto") -> torch.autocast:
    """The autocast context for running a model on ``device`` at ``precision``."""
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=resolve_precision(device, precision) == "bf16")
