"""fit's epoch checkpoints: when one is due (the train.checkpoint_every_* policy), what run it belongs to, and
writing / resuming it atomically, so a run started again with the same inputs ends with the same weights."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch

from clipcite.train_params import FitParams

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"


def checkpoint_due(params: FitParams, epochs_done: int, seconds_since_save: float) -> bool:
    """Whether the checkpoint policy saves after ``epochs_done`` epochs (train.checkpoint_every_*)."""
    every, minutes = params.checkpoint_every_epochs, params.checkpoint_every_minutes
    by_epoch = every > 0 and epochs_done % every == 0
    by_time = minutes > 0 and seconds_since_save >= 60 * minutes
    return by_epoch or by_time


# How a run is executed, not what it computes: a checkpoint written under one value resumes under another.
RUNTIME_SETTINGS = (
    "num_workers",
    "prefetch_factor",
    "decode_cache_mb",
    "checkpoint_every_epochs",
    "checkpoint_every_minutes",
    "checkpoint_optimizer",
)


def fingerprint_of(identity: str, params: FitParams, seed: int, ids: list[str], prompts: list[str]) -> str:
    """What a checkpoint belongs to: model, recipe (runtime settings aside), seed, split ids and prompts."""
    recipe = {k: v for k, v in asdict(params).items() if k not in RUNTIME_SETTINGS}
    body = json.dumps([identity, recipe, seed, ids, prompts], sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def save_checkpoint(directory, fingerprint, epoch, model, head, optimizer, scheduler) -> Path | None:
    """Atomic: written to a temp file, then renamed over the previous checkpoint. Returns its path.
    ``optimizer=None`` leaves AdamW's state out (train.checkpoint_optimizer=false)."""
    if directory is None:
        return None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "fingerprint": fingerprint,
        "epoch": epoch,
        "model": model.state_dict(),
        "head": head.detach(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict(),
    }
    tmp = directory / f".{CHECKPOINT}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, directory / CHECKPOINT)
    return directory / CHECKPOINT


def resume(directory, fingerprint, model, head, optimizer, scheduler) -> int:
    """Load the checkpoint in ``directory`` into the run's state; the epochs it completed (0: none there)."""
    path = Path(directory) / CHECKPOINT if directory is not None else None
    if path is None or not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["fingerprint"] != fingerprint:
        raise ValueError(
            f"{path}: checkpoint belongs to another run (model, config, seed or split differ); "
            "delete it or point checkpoint_dir elsewhere"
        )
    model.load_state_dict(state["model"])
    with torch.no_grad():
        head.copy_(state["head"])
    if state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    else:  # documented in FitParams: the run continues, but is not bit-exact with an uninterrupted one
        log.warning(
            "%s holds no optimizer state (train.checkpoint_optimizer=false): AdamW's moments restart from zero, "
            "so the result will differ from an uninterrupted run",
            path,
        )
    scheduler.load_state_dict(state["scheduler"])
    log.info("resumed from %s after epoch %d", path, state["epoch"])
    return int(state["epoch"])
