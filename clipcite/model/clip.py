"""open_clip models: loading, text features, weight-space averaging, and saving fine-tuned models.

A model is named by an open_clip architecture (``ViT-B-16-quickgelu``), a JSON architecture file (tiny models for
tests; loaded through the same open_clip code path) or ``local-dir:<path>``, plus ``pretrained``: an open_clip tag
(``openai``; downloads in the real world), a local checkpoint (``.safetensors``, or an open_clip ``.pt`` read with
``weights_only=True``), or empty for a random initialisation seeded by ``init_seed``.

A saved model is an open_clip ``local-dir`` folder (``open_clip_config.json`` + ``open_clip_model.safetensors``), so
``open_clip.create_model("local-dir:<path>")`` loads it as it is, plus ``clipcite.json`` with what clipcite needs
(class names, template, alpha, the base model's identity). A linear probe's folder also holds
``class_head.safetensors``: class weights that replace the text features of the prompts they were trained for
(:func:`class_features`; every reader of a saved model, evaluate and the served classifier, goes through it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from safetensors.torch import save_file

from clipcite.model.identity import PACKAGE_CONFIGS, arch_name, identity_of, looks_like_path, resolve_checkpoint
from clipcite.records import HEAD_FILE, META_FILE, OPENCLIP_CONFIG_FILE, WEIGHTS_FILE, ModelMeta

log = logging.getLogger(__name__)

open_clip.add_model_config(PACKAGE_CONFIGS)  # clipcite's tiny architectures become ordinary open_clip names


@dataclass
class LoadedModel:
    """An open_clip CLIP with what is needed to reproduce and describe it."""

    model: torch.nn.Module
    tokenizer: object
    name: str  # open_clip architecture name (or local-dir:...)
    model_cfg: dict
    preprocess_cfg: dict
    identity: str  # what a cache or a report must match: "<arch>:<tag>", "sha256:<file hash>", "random:<seed>"
    head: dict[str, torch.Tensor] | None = None  # prompt -> trained class weight [D] (a linear probe's), else None


def resolve_arch(arch: str) -> str:
    """The open_clip name of ``arch`` (:func:`clipcite.model.identity.arch_name`); a JSON architecture file is
    registered with open_clip under its stem."""
    name = arch_name(arch)
    if arch.endswith(".json"):
        open_clip.add_model_config(Path(arch))
    return name


class _OpenClipChatter(logging.Filter):
    """open_clip logs a dozen INFO lines per model load through the root logger itself (``logging.info``):
    dropped while clipcite loads a model; its warnings, and every other logger's records, pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and record.levelno < logging.WARNING)


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    root, chatter = logging.getLogger(), _OpenClipChatter()
    root.addFilter(chatter)
    try:
        yield
    finally:
        root.removeFilter(chatter)


def load_model(arch: str, pretrained: str = "", *, init_seed: int = 0, device: str = "cpu") -> LoadedModel:
    """Create an open_clip model in fp32 (autocast handles mixed precision) and report its identity."""
    with _quiet_open_clip():
        return _load_model(arch, pretrained, init_seed=init_seed, device=device)


def _load_model(arch: str, pretrained: str, *, init_seed: int, device: str) -> LoadedModel:
    name = resolve_arch(arch)
    identity = identity_of(name, pretrained, init_seed)
    if name.startswith("local-dir:"):
        model = open_clip.create_model(name, device=device)
        model_cfg = json.loads((Path(name.removeprefix("local-dir:")) / OPENCLIP_CONFIG_FILE).read_text())["model_cfg"]
    else:
        model_cfg = open_clip.get_model_config(name)
        if not pretrained:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                model = open_clip.create_model(name, device=device, pretrained_text=False)
        elif looks_like_path(pretrained):
            path = resolve_checkpoint(pretrained)
            try:
                model = open_clip.create_model(name, pretrained=str(path), device=device, weights_only=True)
            except Exception as e:  # safetensors/torch raise many types for a bad file
                raise ValueError(f"{path}: cannot load checkpoint for {name} ({type(e).__name__}: {e})") from e
        else:
            model = open_clip.create_model(name, pretrained=pretrained, device=device, require_pretrained=True)
    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
    tokenizer = open_clip.get_tokenizer(name)
    return LoadedModel(model, tokenizer, name, model_cfg, preprocess_cfg, identity)


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module, tokenizer, prompts: list[str], batch_size: int = 256, device: str = "cpu"
) -> torch.Tensor:
    """L2-normalised text features [len(prompts), D], encoded in batches (no gradient)."""
    chunks = [
        model.encode_text(tokenizer(prompts[i : i + batch_size]).to(device), normalize=True).float()
        for i in range(0, len(prompts), batch_size)
    ]
    return torch.cat(chunks)


def class_features(loaded: LoadedModel, prompts: list[str], batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
    """The classifier's L2-normalised class weights [len(prompts), D]: the model's text features of ``prompts``,
    except that a prompt the model's class head was trained for (a linear probe's) gets the head's row. A prompt
    the head does not know (a new class, another template) keeps the text encoder's feature."""
    text = encode_texts(loaded.model, loaded.tokenizer, prompts, batch_size, device)
    if loaded.head:
        for i, prompt in enumerate(prompts):
            if prompt in loaded.head:
                text[i] = loaded.head[prompt].to(text.device, text.dtype)
    return text


def head_bytes(weights: torch.Tensor, prompts: list[str]) -> bytes:
    """A class head as safetensors bytes: ``weights`` [C, D] (normalised rows), the prompts in the metadata."""
    if len(prompts) != len(weights):
        raise ValueError(f"class head: {len(weights)} rows for {len(prompts)} prompts")
    return save_tensors({"weights": weights.contiguous()}, metadata={"prompts": json.dumps(list(prompts))})


def read_head(data: bytes) -> dict[str, torch.Tensor]:
    """The class head of :func:`head_bytes`: prompt -> weight row."""
    (size,) = struct.unpack("<Q", data[:8])
    prompts = json.loads(json.loads(data[8 : 8 + size])["__metadata__"]["prompts"])
    weights = load_tensors(data)["weights"].float()
    return dict(zip(prompts, weights, strict=True))


def average_weights(
    finetuned: dict[str, torch.Tensor], zeroshot: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """theta = alpha * theta_ft + (1 - alpha) * theta_zs for every float tensor (method.md "Weight-space ensemble").

    Both state dicts must hold the same keys and shapes; non-float buffers must be equal and are copied.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if finetuned.keys() != zeroshot.keys():
        extra, missing = sorted(finetuned.keys() - zeroshot.keys()), sorted(zeroshot.keys() - finetuned.keys())
        raise ValueError(f"cannot average: keys differ (only fine-tuned: {extra[:5]}, only zero-shot: {missing[:5]})")
    out = {}
    for key, ft in finetuned.items():
        zs = zeroshot[key]
        if ft.shape != zs.shape:
            raise ValueError(f"cannot average {key}: shape {tuple(ft.shape)} vs {tuple(zs.shape)}")
        if ft.is_floating_point():
            if alpha == 1.0:
                out[key] = ft.clone()
            elif alpha == 0.0:
                out[key] = zs.to(ft.dtype).clone()
            else:
                out[key] = alpha * ft + (1.0 - alpha) * zs.to(ft.dtype)
        else:
            if not torch.equal(ft, zs):
                raise ValueError(f"cannot average {key}: non-float buffers differ")
            out[key] = ft.clone()
    return out


def save_model(loaded: LoadedModel, state_dict: dict[str, torch.Tensor], out_dir: Path, meta: ModelMeta) -> None:
    """Write an open_clip local-dir folder plus clipcite.json into ``out_dir`` (a staged directory)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(out_dir / WEIGHTS_FILE))
    config = {"model_cfg": loaded.model_cfg, "preprocess_cfg": _jsonable(loaded.preprocess_cfg)}
    (out_dir / OPENCLIP_CONFIG_FILE).write_text(json.dumps(config, indent=2))
    meta.write(out_dir)


def load_saved(model_dir: str | Path, device: str = "cpu") -> tuple[LoadedModel, ModelMeta]:
    """Load a model written by :func:`save_model`; returns it and its clipcite.json."""
    folder = Path(model_dir)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not a clipcite model folder (no {META_FILE})")
    loaded = load_model(f"local-dir:{folder}", device=device)
    if (folder / HEAD_FILE).is_file():
        loaded.head = read_head((folder / HEAD_FILE).read_bytes())
    return loaded, ModelMeta.read(folder)


def _jsonable(cfg: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch  # here, not at the top: torch is imported above anyway; kept lazy for symmetry

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
