"""Non-finite values stop the run where they appear (a diverging loss, a broken checkpoint, a bad input), so no
model with NaN weights is saved, evaluated or registered. One error type; the message says where and what."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class NonFiniteError(FloatingPointError):
    """A loss term, gradient, feature, logit or weight that is NaN or infinite; the message says where."""


def require_finite(values: torch.Tensor, what: str, names: Sequence[str] | Callable[[], Sequence[str]]) -> None:
    """Raise naming the rows of ``values`` [N, ...] that hold a NaN or inf (``names[i]`` names row i). ``names`` may
    be a function that makes them, called only then (loops over batches need not format ids for every batch)."""
    bad = ~torch.isfinite(values.detach()).reshape(len(values), -1).all(dim=1)
    if bool(bad.any()):
        named = names() if callable(names) else names
        listed = [named[int(i)] for i in bad.nonzero().flatten()[:5]]
        raise NonFiniteError(f"{what}: not finite for {int(bad.sum())} of {len(values)}, e.g. {listed}")


def row_ids(rows: Sequence[dict[str, object]], index: torch.Tensor) -> Callable[[], list[str]]:
    """The ids of ``rows[index]`` for :func:`require_finite`, formatted only if a row is not finite."""
    return lambda: [f"id={rows[int(i)]['id']}" for i in index]


def nonfinite_weights(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or inf."""
    return [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
