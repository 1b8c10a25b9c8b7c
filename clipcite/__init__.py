"""clipcite: few-shot full fine-tuning of CLIP with CLIP-CITE.

The building blocks most users call directly; the steps (``clipcite.steps``) and the CLI compose them. They are
imported on first use, so ``import clipcite`` (and every command's start, ``--help`` included) does not pay for
torch and open_clip until something needs them.
"""

import importlib

__version__ = "0.1.0"
_EXPORTS = {
    "FitParams": "clipcite.train_params",
    "average_weights": "clipcite.model.clip",
    "base_new_classes": "clipcite.data.splits",
    "cite_loss": "clipcite.training.losses",
    "clip_loss": "clipcite.training.losses",
    "dva_loss": "clipcite.training.losses",
    "fit": "clipcite.training.loop",
    "load_model": "clipcite.model.clip",
    "load_saved": "clipcite.model.clip",
    "sample_few_shot": "clipcite.data.splits",
    "scl_loss": "clipcite.training.losses",
    "vld_loss": "clipcite.training.losses",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clipcite' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
