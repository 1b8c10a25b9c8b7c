"""One module per training method, each offering ``trainer(setup) -> Trainer`` (clipcite/training/methods/common.py):
what it trains, its loss per batch, what it saves. :func:`clipcite.training.loop.fit` runs any of them in the same loop.

A new method is a new module here plus its name in ``MODULES`` and in ``clipcite.train_params.METHODS`` (the torch-free
list the config validates against; a test keeps the two equal).
"""

from __future__ import annotations

from types import ModuleType

from clipcite.training.methods import cite, linear_probe, lora

MODULES: dict[str, ModuleType] = {
    "ce": cite,  # L_DVA only
    "flyp": cite,  # FLYP's CLIP loss on class prompts
    "cite": cite,
    "lora": lora,
    "linear_probe": linear_probe,
}
# "zeroshot" trains nothing: fit returns the pre-trained weights before it asks a method
