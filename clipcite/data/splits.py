"""Few-shot sampling and the base/new class split (method.md "Evaluation protocols"). Pure functions.

Sampling ranks each image of a class by ``sha256(f"{seed}:{id}")`` and keeps the K smallest. The result depends
only on (seed, image ids), not on any global random state, library version, row order or machine, and the K-shot
subset is contained in the 2K-shot one of the same seed. (CoOp draws with Python's ``random.sample``; its exact
subsets cannot be reproduced without its pickles, so the rule here is the same protocol — K per class, seeded —
with a stable generator.)
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence


class NotEnoughShotsError(ValueError):
    """A class has fewer images than the requested number of shots."""


def _rank(seed: int, image_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{image_id}".encode()).digest()


def sample_few_shot(
    ids: Sequence[str],
    labels: Sequence[int],
    k: int,
    seed: int,
    *,
    allow_fewer: bool = False,
    classnames: Sequence[str] | None = None,
    what: str = "train",
    skip: int = 0,
    flag: str = "shots",
) -> list[int]:
    """Indices of K images per class (all of a class's images if it has fewer and ``allow_fewer``).

    Returned in label order, then rank order. ``skip`` > 0 passes over each class's first ``skip`` images in rank
    order: with ``skip`` = the training K, the next K images are held out (disjoint from the training shots of the
    same seed). ``classnames`` only improves the error message; ``flag`` is the setting it tells the user to lower.
    """
    if k < 1:
        raise ValueError(f"{flag} must be >= 1, got {k}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[int(label)].append(index)
    chosen: list[int] = []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda i: (_rank(seed, ids[i]), ids[i]))[skip:]
        if len(members) < k and not allow_fewer:
            name = f"{classnames[label]!r} (label {label})" if classnames else f"label {label}"
            beyond = f" beyond the {skip} training shots" if skip else ""
            raise NotEnoughShotsError(
                f"class {name} has {len(members)} {what} image(s){beyond}, fewer than {flag}={k}; "
                f"lower the {flag} or allow fewer: --set splits.allow_fewer=true (pipeline.py: --param "
                "'overrides={\"splits.allow_fewer\": true}')"
            )
        chosen.extend(members[:k])
    return chosen


def val_shots(k: int, requested: int = 0) -> int:
    """Validation images per class: ``splits.val_shots``, or K (the training shots) when it is 0."""
    if requested < 0:
        raise ValueError(f"splits.val_shots must be >= 0 (0 = the shots, K), got {requested}")
    return requested or k


def base_new_classes(labels: Sequence[int]) -> tuple[list[int], list[int]]:
    """Sorted label ids split into base (first ceil(C/2)) and new (the rest)."""
    unique = sorted({int(x) for x in labels})
    cut = math.ceil(len(unique) / 2)
    return unique[:cut], unique[cut:]


def relabel(labels: Sequence[int], keep: Sequence[int]) -> list[int]:
    """Map labels in ``keep`` to 0..len(keep)-1 (in the order of ``keep``); other labels are an error."""
    mapping = {old: new for new, old in enumerate(keep)}
    try:
        return [mapping[int(x)] for x in labels]
    except KeyError as e:
        raise ValueError(f"label {e.args[0]} is not among the kept classes") from None
