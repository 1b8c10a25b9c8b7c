"""The pipeline run's words in the MLflow UI: its name and its description (the run page's "Description").

Pure functions (plain data in, text out), like :mod:`clipcite.tracking.model_card` for the registry: the snapshot step
gathers what is known before any training (the data, the base model, the method and the config) and sets them on
the run it opens; register adds the version it registered.

The name puts what tells runs apart first and keeps it short, because the runs table and the charts' legends cut
it: ``<method>-<model>-<data> <date> <time>``, e.g. ``cite-toyclip-toyworld 2026-12-02 14:03``.
"""

from __future__ import annotations

import json
import time

REGISTERED_HEADING = "**Registered**"  # register replaces the paragraph under it on a rerun, never adds a second


def model_tag(arch: str, pretrained: str) -> str:
    """A short name for the base model: the architecture, with the open_clip weights tag when there is one
    (``ViT-B-16:openai``); a checkpoint path or an empty ``pretrained`` (random init) adds nothing."""
    tag = pretrained.strip()
    if tag and not any(c in tag for c in "/:."):  # an open_clip tag, not a path, URI or file name
        return f"{arch}:{tag}"
    return arch


def run_name(*, method: str, arch: str, pretrained: str, data: str, started: float | None = None) -> str:
    """``<method>-<model>-<data> <YYYY-MM-DD HH:MM>`` (local time); parts that are not known are left out."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
    parts = [p for p in (method, model_tag(arch, pretrained) if arch else "", data) if p]
    return f"{'-'.join(parts) or 'clipcite'} {when}"


def run_description(
    *,
    data_name: str,
    data_uri: str,
    eval_data_uris: list[str],
    data_digest: str,
    model: dict,
    method: str = "",
    shots: int | None = None,
    seed: int | None = None,
    preset: str = "",
    overrides: dict | None = None,
    kfp_run_id: str = "",
    kfp_run_name: str = "",
    code_version: str = "",
) -> str:
    """The run's Description (Markdown, the ``mlflow.note.content`` tag): one sentence saying what the run is, then
    a table of where each part came from. ``model``: ``arch``, ``pretrained`` and ``identity`` (any may be "")."""
    what = f"**{method}**" if method else "A run"
    recipe = ", ".join(p for p in (f"{shots} shots" if shots else "", f"seed {seed}" if seed is not None else "") if p)
    base = model.get("arch") or ""
    sentence = f"{what} on **{data_name or data_uri}**" + (f" from `{base}`" if base else "")
    sentence += f" ({recipe})." if recipe else "."
    rows = [
        ("data", f"`{data_uri}`" + "".join(f", eval `{u}`" for u in eval_data_uris)),
        ("data digest", f"`{data_digest}`" if data_digest else ""),
        ("base model", f"`{base}`, weights `{model.get('pretrained') or '(random init)'}`" if base else ""),
        ("model identity", f"`{model['identity']}`" if model.get("identity") else ""),
        ("method", method),
        ("config", f"preset `{preset}`" if preset else ""),
        ("overrides", f"`{json.dumps(overrides, sort_keys=True)}`" if overrides else ""),
        ("KFP run", _kfp_run(kfp_run_id, kfp_run_name)),
        ("code", f"clipcite `{code_version}`" if code_version else ""),
    ]
    table = ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows if value)]
    steps = "Steps are the nested runs (`evaluate-<domain>` per eval domain); per-domain metrics: `metrics_table.json`."
    return "\n".join([sentence, "", *table, "", steps, ""])


def with_registration(description: str, name: str, version: int, role: str, reason: str) -> str:
    """``description`` with the paragraph saying which registered version this run made (replacing an earlier one:
    a rerun of register finds the same version)."""
    kept = description.split(f"\n{REGISTERED_HEADING}", 1)[0].rstrip("\n")
    return f"{kept}\n\n{REGISTERED_HEADING}: `{name}` v{version}, {role} ({reason}).\n"


def _kfp_run(run_id: str, name: str) -> str:
    if not run_id:
        return ""
    return f"`{run_id}`" + (f" (`{name}`)" if name and name != run_id else "") + ": the KFP UI's Runs page"
