"""One module per training method, each offering ``trainer(setup) -> Trainer`` (clipcite/training/methods/common.py):
what it trains, its loss per batch, what it saves. :func:`clipcite.training.loop.fit` runs any of them in the same loop.

Which module trains which method is a line of ``clipcite.train_params.REGISTRY`` (torch-free, so the config validates
method names without loading torch); a method's module is imported the first time it trains.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from clipcite.train_params import REGISTRY


def module(method: str) -> ModuleType:
    """The module that trains ``method`` (a name of ``REGISTRY``)."""
    return importlib.import_module(f"{__name__}.{REGISTRY[method].module}")
