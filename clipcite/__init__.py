"""clipcite: few-shot full fine-tuning of CLIP with CLIP-CITE.

The building blocks most users call directly; the steps (``clipcite.steps``) and the CLI compose them.
"""

from clipcite.losses import cite_loss, clip_loss, dva_loss, scl_loss, vld_loss
from clipcite.models import average_weights, load_model, load_saved
from clipcite.splits import base_new_classes, sample_few_shot
from clipcite.train import FitParams, fit

__version__ = "0.1.0"
__all__ = [
    "FitParams",
    "average_weights",
    "base_new_classes",
    "cite_loss",
    "clip_loss",
    "dva_loss",
    "fit",
    "load_model",
    "load_saved",
    "sample_few_shot",
    "scl_loss",
    "vld_loss",
]
