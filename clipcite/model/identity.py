"""A base model's identity without building it, and without torch or open_clip: what the snapshot step records and
cache-teacher's cache key depends on. :mod:`clipcite.model.clip` loads models and reports the same identity.

An identity is ``sha256:<file hash>`` for a checkpoint file (checked against its ``.sha256`` record) or a saved
``local-dir:`` model, ``<arch>:<tag>`` for an open_clip pretrained tag, ``random:<arch>:<init seed>`` without weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from functools import cache
from pathlib import Path

from clipcite.records import WEIGHTS_FILE

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the clipcite package: it ships these files
PACKAGE_CONFIGS = PACKAGE_ROOT / "model_configs"  # clipcite's tiny architectures, open_clip names too
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified_sha256(path: Path) -> str:
    """The file's SHA-256, checked against ``<file>.sha256`` when that record exists beside it."""
    digest = file_sha256(path)
    record = path.with_name(path.name + ".sha256")
    if record.is_file():
        expected = record.read_text().split()[0]
        if digest != expected:
            raise ValueError(
                f"{path}: SHA-256 {digest} does not match the recorded {expected} in {record}; "
                "the checkpoint is corrupt or was replaced"
            )
    return digest


def resolve_checkpoint(pretrained: str) -> Path:
    """``clipcite:<path>`` names a checkpoint shipped inside the package (the toy world's); else a plain path."""
    if pretrained.startswith("clipcite:"):
        return PACKAGE_ROOT / pretrained.removeprefix("clipcite:")
    return Path(pretrained)


def looks_like_path(pretrained: str) -> bool:
    """``pretrained`` names a checkpoint file rather than an open_clip tag."""
    return (
        pretrained.startswith("clipcite:")
        or "/" in pretrained
        or Path(pretrained).suffix in CHECKPOINT_SUFFIXES
        or Path(pretrained).is_file()
    )


def arch_name(arch: str) -> str:
    """The open_clip name of ``arch``: a JSON architecture file's stem (the file is checked), a known open_clip or
    clipcite architecture name, or ``local-dir:<path>`` as given."""
    if arch.endswith(".json"):
        path = Path(arch)
        if not path.is_file():
            raise FileNotFoundError(f"{arch}: architecture config file not found")
        body = json.loads(path.read_text())
        if not all(k in body for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ValueError(f"{arch}: not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
        return path.stem
    if not arch.startswith("local-dir:") and arch not in known_architectures():
        raise ValueError(f"unknown architecture {arch!r}: not an open_clip model name or a .json config file")
    return arch


@cache
def known_architectures() -> frozenset[str]:
    """open_clip's architecture names (its ``model_configs`` files, found without importing open_clip, which
    imports torch) and clipcite's."""
    spec = importlib.util.find_spec("open_clip")
    folders = [PACKAGE_CONFIGS]
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(p) / "model_configs" for p in spec.submodule_search_locations]
    return frozenset(f.stem for folder in folders for f in folder.glob("*.json"))


def checkpoint_identity(arch: str, pretrained: str = "", *, init_seed: int = 0) -> str:
    """What ``clipcite.model.clip.load_model`` reports, without building the model.

    The pipeline keys its teacher cache on this, so a checkpoint replaced under the same path is never served a
    cache built from the old weights.
    """
    return identity_of(arch_name(arch), pretrained, init_seed)


def identity_of(name: str, pretrained: str, init_seed: int) -> str:
    """The identity of the architecture ``name`` (already resolved by :func:`arch_name`) with ``pretrained``."""
    if name.startswith("local-dir:"):
        return "sha256:" + file_sha256(Path(name.removeprefix("local-dir:")) / WEIGHTS_FILE)
    if not pretrained:
        return f"random:{name}:{init_seed}"
    if looks_like_path(pretrained):
        path = resolve_checkpoint(pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint file not found (model.pretrained={pretrained!r})")
        return "sha256:" + verified_sha256(path)
    return f"{name}:{pretrained}"
