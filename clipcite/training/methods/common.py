"""The one interface every method module offers: ``trainer(setup) -> Trainer``.

:func:`clipcite.training.loop.fit` owns the loop (batches, autocast, the non-finite guard, AdamW, the cosine schedule,
checkpoints, logging); a method says what it trains (``groups``), its loss per batch (``loss``) and what it saves
(``finish``). A method needs no base class and registers nowhere but in its line of
``clipcite.train_params.REGISTRY``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from clipcite.model.clip import LoadedModel
from clipcite.train_params import FitParams
from clipcite.training.teacher_cache import TeacherCache


@dataclass
class Setup:
    """What fit hands every method: the student on its device and the run's inputs, already checked."""

    student: LoadedModel  # student.model is on ``device``
    rows: list[dict]  # the train split: id, image/path, label
    prompts: list[str]  # one class prompt per label
    tokens: torch.Tensor  # [C, L] the prompts tokenised, on ``device``
    teacher_text: torch.Tensor  # [C, D] the frozen model's normalised prompt features
    labels: torch.Tensor  # [N] the rows' labels
    zeroshot_state: dict[str, torch.Tensor]  # the student's weights before any step (on the CPU)
    params: FitParams
    scale: float  # the fixed logit scale s of every loss
    steps_per_epoch: int
    seed: int
    device: str
    cache: TeacherCache | None = None
    teacher: LoadedModel | None = None
    source: str = ""  # prefix for error messages (the split's address)


@dataclass
class Batch:
    """One step's inputs: the rows ``index`` [B] of ``epoch``, their crops ``images`` [B, 3, H, W] (None for a
    method that trains on cached features) and ``labels`` [B]."""

    epoch: int
    index: torch.Tensor
    images: torch.Tensor | None
    labels: torch.Tensor


@dataclass
class Saved:
    """What a method leaves behind: the open_clip weights the model folder holds (open_clip keys), the files it
    writes beside them (name -> bytes, e.g. the LoRA adapter) and what goes into clipcite.json."""

    state_dict: dict[str, torch.Tensor]
    files: dict[str, bytes] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


@dataclass
class Trainer:
    """One method's training, as fit's loop runs it."""

    groups: list[dict]  # AdamW parameter groups: what it trains (everything else has requires_grad=False)
    loss: Callable[[Batch], dict[str, torch.Tensor]]  # every term by name, with "total"
    finish: Callable[[], Saved]  # called once, after the last step
    state: torch.nn.Module  # what an epoch checkpoint holds and a resume loads (with ``head``)
    head: torch.nn.Parameter  # the class head W (an empty tensor for a method without one)
    epochs: int
    steps: int  # optimiser steps in all; the last epoch may stop early (CLIP-LoRA counts iterations)
    alpha: float  # the weight-space ensemble the saved weights use (1.0 = none)
    needs_images: bool = True  # False: batches carry no images and no image is decoded

    def trainable_parameters(self) -> int:
        return sum(p.numel() for group in self.groups for p in group["params"])


def no_head() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.empty(0), requires_grad=False)


def shots_per_class(labels: torch.Tensor) -> int:
    """K: the most rows any class has (the few-shot split's shots)."""
    return int(torch.bincount(labels).max()) if len(labels) else 0
