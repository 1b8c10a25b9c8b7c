"""Hand-off records for unit tests that need one without running the step that writes it: the fields a test names,
plausible values for the rest."""

from __future__ import annotations

from typing import Any

from clipcite.records import EvalReport, ModelMeta

REPORT_DEFAULTS: dict[str, Any] = {
    "model": "model",
    "method": "cite",
    "alpha": 0.5,
    "seed": 1,
    "template": "",
    "train_domains": (),
    "mean_over": "ood",
    "domains": {},
    "mean": {},
    "mean_domains": (),
    "source_domains": (),
    "sets": {},
}
META_DEFAULTS: dict[str, Any] = {
    "arch": "clipcite-tiny",
    "base_identity": "sha256:0",
    "method": "cite",
    "classnames": ("a", "b"),
    "template": "a photo of a {}.",
}


def report(**fields: Any) -> EvalReport:
    """An evaluation report; sequences given as lists become the tuples the record holds."""
    body = {**REPORT_DEFAULTS, **fields}
    return EvalReport(**{k: tuple(v) if isinstance(v, list) else v for k, v in body.items()})


def meta(**fields: Any) -> ModelMeta:
    body = {**META_DEFAULTS, **fields}
    return ModelMeta(**{k: tuple(v) if isinstance(v, list) else v for k, v in body.items()})


def base_new(base: float, new: float) -> dict[str, float]:
    """One model's Base / New / HM on a domain."""
    return {"base": base, "new": new, "hm": 2 * base * new / (base + new)}


# A merged base-to-new report with a compared champion: trained on photo, the mean over sketch.
SAMPLE_REPORT = report(
    models=["zeroshot", "finetuned", "champion"],
    champion_version=3,
    train_domains=["photo"],
    source_domains=["photo"],
    mean_domains=["sketch"],
    domains={
        "photo": {"zeroshot": base_new(70, 60), "finetuned": base_new(90, 62), "champion": base_new(85, 61)},
        "sketch": {"zeroshot": base_new(50, 40), "finetuned": base_new(58, 41), "champion": base_new(55, 40)},
    },
    mean={"zeroshot": base_new(50, 40), "finetuned": base_new(58, 41), "champion": base_new(55, 40)},
)
