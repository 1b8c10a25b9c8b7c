"""``zeroshot``: nothing trains. The saved model is the pre-trained one, so a run of the pipeline with this method
registers the baseline every other method has to beat (and ``--methods`` can list it as a candidate)."""

from __future__ import annotations

import torch

from clipcite.training.methods.common import Batch, Saved, Setup, Trainer, no_head


def trainer(setup: Setup) -> Trainer:
    """No parameter group and no step: fit's loop runs nothing and saves the weights from before any step."""

    def loss(batch: Batch) -> dict[str, torch.Tensor]:
        raise RuntimeError("zeroshot trains nothing: it has no loss")

    def finish() -> Saved:
        return Saved(setup.zeroshot_state)

    model = setup.student.model
    return Trainer([], loss, finish, model, no_head(), 0, 0, setup.params.alpha, needs_images=False)
