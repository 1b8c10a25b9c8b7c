"""CLIP-LoRA (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models", CVPR-W 2024):
low-rank updates of the q, k, v projections of every transformer block of both encoders, the base weights frozen
(docs/method.md "Added methods").

open_clip's blocks use ``nn.MultiheadAttention``, which packs q, k, v into one ``in_proj_weight`` [3d, d]: the
adapter adds ``scaling * B_j @ A_j`` to each of its three slices (``scaling = alpha / r``), with dropout on the LoRA
branch's input as the paper's code has it, an independent mask per projection. Training runs the block through
:class:`LoRAAttention`, which computes the same attention as ``nn.MultiheadAttention`` from the adapted
projections; saving merges the update into ``in_proj_weight``, so the saved model is a plain open_clip model.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from clipcite.model.clip import average_weights
from clipcite.records import LORA_FILE
from clipcite.training import distributed
from clipcite.training.methods.common import Batch, Saved, Setup, Trainer, no_head, shots_per_class

ADAPTER_FILE = LORA_FILE


class LoRAAttention(torch.nn.Module):
    """``base`` (an ``nn.MultiheadAttention``, frozen) with LoRA on its q, k, v projections. Self-attention only,
    the way open_clip's encoder blocks call it: ``attn(x, x, x, need_weights=False, attn_mask=mask)``."""

    def __init__(
        self, base: torch.nn.MultiheadAttention, rank: int, alpha: float, dropout: float, generator: torch.Generator
    ):
        super().__init__()
        d, device = base.embed_dim, base.in_proj_weight.device
        self.base = base
        a = torch.empty(3, rank, d)
        for part in a:  # loralib's initialisation: A ~ Kaiming-uniform, B = 0 (the update starts at 0)
            torch.nn.init.kaiming_uniform_(part, a=math.sqrt(5), generator=generator)
        self.lora_a = torch.nn.Parameter(a.to(device))
        self.lora_b = torch.nn.Parameter(torch.zeros(3, d, rank, device=device))
        self.scaling = alpha / rank
        self.dropout = dropout
        self.generator: torch.Generator | None = None  # dropout masks from this (reseeded per batch) when set

    def delta(self) -> torch.Tensor:
        """The update of ``in_proj_weight``: [3d, d], the q, k, v slices stacked."""
        return self.scaling * torch.bmm(self.lora_b, self.lora_a).reshape(-1, self.base.embed_dim)

    def forward(self, query, key, value, need_weights: bool = False, attn_mask: torch.Tensor | None = None, **kw):
        base = self.base
        if not (query is key is value) or need_weights or kw.get("key_padding_mask") is not None:
            raise ValueError("LoRAAttention supports open_clip's self-attention call only")
        x = query if base.batch_first else query.transpose(0, 1)  # [B, L, d]
        qkv = F.linear(x, base.in_proj_weight, base.in_proj_bias)  # [B, L, 3d]
        lora_in = x.unsqueeze(-2).expand(*x.shape[:-1], 3, x.shape[-1])  # one input per projection: [B, L, 3, d]
        if self.training and self.dropout > 0:
            keep = torch.rand(lora_in.shape, generator=self.generator, device=x.device) >= self.dropout
            lora_in = lora_in * keep.to(x.dtype) / (1.0 - self.dropout)
        low = torch.einsum("blkd,krd->blkr", lora_in, self.lora_a.to(x.dtype))
        qkv = qkv + self.scaling * torch.einsum("blkr,kdr->blkd", low, self.lora_b.to(x.dtype)).flatten(-2)
        out = _attention(qkv, base, attn_mask, base.dropout if self.training else 0.0)
        return (out if base.batch_first else out.transpose(0, 1)), None


def _attention(qkv: torch.Tensor, base: torch.nn.MultiheadAttention, mask, dropout_p: float) -> torch.Tensor:
    """``nn.MultiheadAttention``'s computation from projected q, k, v [B, L, 3d]: heads, scaled dot-product attention
    with its float or boolean mask (True = not attended, PyTorch's MHA convention), then ``out_proj``."""
    b, length, _ = qkv.shape
    heads = base.num_heads
    q, k, v = (t.reshape(b, length, heads, -1).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(mask, float("-inf"))
        mask = mask.to(q.dtype)
        if mask.ndim == 3:  # [B * heads, L, L]
            mask = mask.reshape(b, heads, length, length)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return base.out_proj(out.transpose(1, 2).reshape(b, length, -1))


def attention_paths(model: torch.nn.Module) -> list[str]:
    """The ``attn`` of every transformer block of both encoders (``visual.transformer.resblocks.<i>.attn``,
    ``transformer.resblocks.<i>.attn``); an encoder block with another attention type is an error naming it."""
    paths = []
    for tower in ("visual.transformer", "transformer"):
        blocks = model.get_submodule(tower).resblocks if _has(model, tower) else []
        if not len(blocks):
            raise ValueError(f"LoRA: the model has no transformer blocks at {tower}.resblocks (a ViT CLIP is needed)")
        for i, block in enumerate(blocks):
            attn = getattr(block, "attn", None)
            attn = attn.base if isinstance(attn, LoRAAttention) else attn
            if not isinstance(attn, torch.nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
                raise ValueError(
                    f"LoRA: {tower}.resblocks.{i}.attn is {type(attn).__name__}, not an nn.MultiheadAttention with "
                    "packed q, k, v (open_clip's ResidualAttentionBlock); this architecture is not supported"
                )
            paths.append(f"{tower}.resblocks.{i}.attn")
    return paths


def _has(model: torch.nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def attach(
    model: torch.nn.Module, rank: int, alpha: float, dropout: float, *, seed: int = 0
) -> dict[str, LoRAAttention]:
    """Put a :class:`LoRAAttention` in place of every encoder block's attention (A initialised from ``seed``) and
    freeze every other weight. Returns the adapters by the attention's path."""
    adapters, generator = {}, torch.Generator().manual_seed(seed)
    for path in attention_paths(model):
        parent, name = path.rsplit(".", 1)
        adapters[path] = LoRAAttention(model.get_submodule(path), rank, alpha, dropout, generator)
        adapters[path].train(model.training)  # dropout follows the model's mode, as if it had always been there
        setattr(model.get_submodule(parent), name, adapters[path])
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    return adapters


def detach(model: torch.nn.Module, adapters: dict[str, LoRAAttention]) -> None:
    """Put the original attention modules back (their weights were never changed)."""
    for path, adapter in adapters.items():
        parent, name = path.rsplit(".", 1)
        setattr(model.get_submodule(parent), name, adapter.base)


def merged_state(model: torch.nn.Module, adapters: dict[str, LoRAAttention]) -> dict[str, torch.Tensor]:
    """The plain open_clip state dict with every update merged: ``in_proj_weight + scaling * B A`` (on the CPU)."""
    updates = {f"{path}.in_proj_weight": adapter.delta().detach() for path, adapter in adapters.items()}
    detach(model, adapters)
    try:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    finally:
        for path, adapter in adapters.items():  # back as it was: merging leaves the model adapted
            parent, name = path.rsplit(".", 1)
            setattr(model.get_submodule(parent), name, adapter)
    for key, update in updates.items():
        state[key] = state[key] + update.cpu().to(state[key].dtype)
    return state


def adapter_bytes(adapters: dict[str, LoRAAttention], meta: dict[str, str]) -> bytes:
    """The adapter alone (``<path>.lora_a`` [3, r, d], ``<path>.lora_b`` [3, d, r]) as safetensors bytes."""
    tensors = {}
    for path, adapter in adapters.items():
        tensors[f"{path}.lora_a"] = adapter.lora_a.detach().cpu().contiguous()
        tensors[f"{path}.lora_b"] = adapter.lora_b.detach().cpu().contiguous()
    return save_tensors(tensors, metadata=meta)


def load_adapter(model: torch.nn.Module, data: bytes, ensemble_alpha: float = 1.0) -> dict[str, LoRAAttention]:
    """Attach a saved adapter (the bytes of ``lora_adapter.safetensors``, the update as trained) to a base model;
    dropout off. The saved model is the base with the update at the weight-space ensemble's alpha (its
    ``clipcite.json`` ``alpha``: W + alpha * (lora.alpha / r) * B A, exactly), so ``ensemble_alpha`` = that alpha
    reproduces it; 1.0 (default) is the adapter as trained."""
    tensors = load_tensors(data)
    meta = _metadata(data)
    adapters = attach(model, int(meta["rank"]), float(meta["alpha"]) * ensemble_alpha, 0.0)
    if set(tensors) != {f"{p}.lora_{x}" for p in adapters for x in "ab"}:
        raise ValueError("LoRA adapter does not match this model's blocks")
    with torch.no_grad():
        for path, adapter in adapters.items():
            adapter.lora_a.copy_(tensors[f"{path}.lora_a"])
            adapter.lora_b.copy_(tensors[f"{path}.lora_b"])
    return adapters


def _metadata(data: bytes) -> dict[str, str]:
    """A safetensors file's string metadata (its JSON header's ``__metadata__``)."""
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]).get("__metadata__", {})


class _Adapters(torch.nn.Module):
    """The LoRA weights alone, for epoch checkpoints (the same tensors the blocks use)."""

    def __init__(self, adapters: dict[str, LoRAAttention]):
        super().__init__()
        self.a = torch.nn.ParameterList([m.lora_a for m in adapters.values()])
        self.b = torch.nn.ParameterList([m.lora_b for m in adapters.values()])


def trainer(setup: Setup) -> Trainer:
    """Only the LoRA weights train (AdamW, ``train.lora.lr``/``weight_decay``) on cross-entropy over
    ``s * cos(image, class text)``, every class prompt re-encoded by the adapted text encoder at every step."""
    params, lora, model = setup.params, setup.params.lora, setup.student.model
    adapters = attach(model, lora.rank, lora.alpha, lora.dropout, seed=setup.seed)
    generator = torch.Generator(device=setup.device)
    for adapter in adapters.values():
        adapter.generator = generator
    weights = [p for m in adapters.values() for p in (m.lora_a, m.lora_b)]
    groups = [{"params": weights, "weight_decay": lora.weight_decay, "lr": lora.lr}]
    towers = distributed.data_parallel(model, uses_text=True)

    def loss(batch: Batch) -> dict[str, torch.Tensor]:
        generator.manual_seed(_batch_seed(setup.seed, batch.epoch, batch.index))  # resumable dropout masks
        sizes = distributed.part_sizes(len(batch.labels))
        image, text = distributed.encode(towers, batch.images, setup.tokens)
        image, labels = distributed.gather(image, sizes), distributed.gather(batch.labels, sizes)
        logits = setup.scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
        ce = F.cross_entropy(logits, labels)
        return {"ce": ce, "total": ce}

    def finish() -> Saved:
        merged = merged_state(model, adapters)
        meta = {"rank": str(lora.rank), "alpha": str(lora.alpha), "base_identity": setup.student.identity}
        adapter = adapter_bytes(adapters, meta)
        detach(model, adapters)  # the student is a plain open_clip model again
        state = average_weights(merged, setup.zeroshot_state, lora.ensemble_alpha)
        info = {
            "lora": {"rank": lora.rank, "alpha": lora.alpha, "file": ADAPTER_FILE, "merged": True},
            "note": f"CLIP-LoRA (rank {lora.rank} on q, k, v of both encoders), merged into the weights; the adapter "
            f"alone is {ADAPTER_FILE}.",
        }
        return Saved(state, {ADAPTER_FILE: adapter}, info)

    if lora.iters_per_shot:  # CLIP-LoRA: 500 x K iterations, however many epochs that takes
        steps = lora.iters_per_shot * shots_per_class(setup.labels)
    else:
        steps = params.epochs * setup.steps_per_epoch
    epochs = -(-steps // setup.steps_per_epoch)
    return Trainer(groups, loss, finish, _Adapters(adapters), no_head(), epochs, steps, lora.ensemble_alpha)


def _batch_seed(seed: int, epoch: int, index: torch.Tensor) -> int:
    body = f"{seed}:{epoch}:{index.tolist()}".encode()
    return int.from_bytes(hashlib.sha256(body).digest()[:8], "little") >> 1
