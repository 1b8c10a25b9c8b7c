"""Prompt templates: the default one and CoOp's per-dataset table (method.md "Notation", docs/data.md)."""

from __future__ import annotations

import re

DEFAULT_TEMPLATE = "a photo of a {}."

# CoOp's one-template-per-dataset table, keyed by clipcite's canonical dataset names (see data/coop.py).
COOP_TEMPLATES: dict[str, str] = {
    "imagenet": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "food101": "a photo of {}, a type of food.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "sun397": "a photo of a {}.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.",
}


def canonical_dataset(name: str) -> str:
    """Map user spellings (``OxfordPets``, ``oxford-pets``, ``DescribableTextures``) to the canonical key."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    aliases = {
        "describabletextures": "dtd",
        "flowers102": "oxford_flowers",
        "oxfordflowers": "oxford_flowers",
        "imagenetadversarial": "imagenet_a",
        "imagenetrendition": "imagenet_r",
        "caltech": "caltech101",
        "caltech101": "caltech101",
        "fgvcaircraft": "fgvc_aircraft",
        "aircraft": "fgvc_aircraft",
    }
    if key in aliases:
        return aliases[key]
    for canonical in COOP_TEMPLATES:
        if key == canonical.replace("_", ""):
            return canonical
    return name


def template_for(dataset: str, template: str = "") -> str:
    """An explicit template wins; else the dataset's CoOp template; else the default."""
    if template:
        return template
    return COOP_TEMPLATES.get(canonical_dataset(dataset), DEFAULT_TEMPLATE) if dataset else DEFAULT_TEMPLATE


def format_prompt(template: str, classname: str) -> str:
    """CoOp replaces ``_`` with spaces in class names before they enter a prompt."""
    if "{}" not in template:
        raise ValueError(f"prompt template {template!r} has no '{{}}' placeholder for the class name")
    return template.format(classname.replace("_", " "))


def prompts_for(template: str, classnames: list[str] | tuple[str, ...]) -> list[str]:
    return [format_prompt(template, c) for c in classnames]
