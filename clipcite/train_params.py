"""The training recipe as data: methods, precisions, crop defaults and ``FitParams``.

Torch-free on purpose: the config (and every CPU-only step that reads it: snapshot, sample-splits, register) loads
without paying for torch at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Method:
    """One entry of :data:`REGISTRY`: where the method's training lives and what its saved weights are."""

    module: str  # its module in clipcite/training/methods (``trainer(setup)``), imported only when it trains
    ensemble: bool  # the saved weights are a weight-space ensemble with the zero-shot weights (train.alpha grid)
    summary: str
    cite_terms: tuple[str, ...] = ()  # which of CITE's loss terms it trains with (their weights, the rest 0)


# Every method, by the name train.method and --methods take. A new method is a module in clipcite/training/methods
# plus its line here; everything else (config validation, the pipeline's per-method inputs, the CLI, the benches,
# the docs' table) follows this table or a test pins it to it (tests/unit/training/test_method_registry.py).
REGISTRY: dict[str, Method] = {
    "zeroshot": Method("zeroshot", False, "no training: the pre-trained weights"),
    "ce": Method("cite", True, "L_DVA only (cross-entropy through the class head)", ("dva",)),
    "flyp": Method("cite", True, "FLYP: CLIP contrastive on class prompts", ("clip",)),
    "cite": Method("cite", True, "CLIP-CITE: L_DVA + lam L_SCL + eta L_VLD", ("dva", "scl", "vld")),
    "lora": Method("lora", True, "CLIP-LoRA: low-rank adapters on q, k, v of both encoders"),
    "linear_probe": Method("linear_probe", False, "CLAP: an anchored linear probe on cached features"),
}
METHODS = tuple(REGISTRY)
# The methods whose saved weights are a weight-space ensemble with the zero-shot weights (train.alpha; LoRA's
# train.lora.ensemble_alpha): the ones train.alpha_grid can choose alpha for.
ENSEMBLE_METHODS = tuple(name for name, method in REGISTRY.items() if method.ensemble)
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults (the paper states no other)
DEFAULT_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class LoraParams:
    """``train.method=lora``: CLIP-LoRA (Zanella & Ben Ayed 2024, docs/method.md "Added methods"), their defaults."""

    rank: int = 2  # CLIP-LoRA: r
    alpha: float = 1.0  # CLIP-LoRA: the LoRA scaling is alpha / r
    dropout: float = 0.25  # CLIP-LoRA: dropout on the LoRA branch's input
    lr: float = 2e-4  # CLIP-LoRA: AdamW (this method ignores train.lr and train.weight_decay)
    weight_decay: float = 1e-2  # CLIP-LoRA
    iters_per_shot: int = 500  # CLIP-LoRA: 500 x K optimiser steps (K shots per class); 0 = train.epochs epochs
    ensemble_alpha: float = 1.0  # CLIP-LoRA has no weight-space ensemble (1.0 = off); 0.5 = CITE's average


@dataclass(frozen=True)
class ProbeParams:
    """``train.method=linear_probe``: CLAP's class-adaptive linear probe (Silva-Rodriguez et al., CVPR 2024) on the
    frozen image features (docs/method.md "Added methods")."""

    penalty: float = 1.0  # CLAP: weight of sum_c lambda_c ||w_c - t_c||^2 (1 = CLAP; 0 = plain ZS-LP, no anchor)
    lr: float = 1e-3  # decision: AdamW on the class weights (this method ignores train.lr and train.weight_decay)
    epochs: int = 0  # passes over the cached crops; 0 = train.epochs (one pass per cached epoch of crops)


@dataclass(frozen=True)
class FitParams:
    """The training recipe. Defaults are the paper's (ViT-B/16) or method.md's marked decisions."""

    method: str = "cite"  # a name of REGISTRY
    epochs: int = 20  # paper
    batch_size: int = 32  # paper (16 for EuroSAT, 64 for ImageNet: see configs/paper_vitb16.yaml)
    lr: float = 5e-6  # paper
    weight_decay: float = 0.1  # decision
    warmup_steps: int = 0  # decision: no warmup by default
    w_dva: float = 1.0  # weight of L_DVA
    lam: float = 0.7  # paper: weight of L_SCL
    eta: float = 0.1  # paper: weight of L_VLD
    w_clip: float = 1.0  # weight of FLYP's CLIP contrastive loss on class prompts (method flyp)
    alpha: float = 0.5  # paper: weight-space ensemble; 1.0 = no ensemble
    # decision: off, the paper fixes alpha. A grid, e.g. [0.3, 0.5, 0.7, 1.0], chooses the ensemble's alpha on the
    # validation split after one training run (clipcite.evaluation.selection.pick_alpha); it replaces train.alpha (and
    # train.lora.ensemble_alpha for lora); a method without an ensemble (linear_probe) ignores it
    alpha_grid: tuple[float, ...] = ()
    # decision: the temperature of every loss, fixed (not trained); "checkpoint" = the base model's own
    # exp(logit_scale) (100 for OpenAI's weights, the paper's s), or a number
    logit_scale: float | str = "checkpoint"
    vld_direction: str = "teacher_student"  # decision: KL(Q||P); "student_teacher" = paper's literal KL(P||Q)
    vld_over: str = "batch"  # decision: batch texts; "classes" = all C class prompts
    train_head: bool = True  # paper: W trainable ("FrozenTC" ablation = false)
    grad_clip: float = 0.0  # decision: off
    crop_scale: tuple[float, float] = DEFAULT_SCALE  # RandomResizedCrop defaults
    crop_ratio: tuple[float, float] = DEFAULT_RATIO
    precision: str = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU (decision)
    num_workers: int = 0
    prefetch_factor: int = 2  # batches each worker prepares ahead (with num_workers > 0)
    decode_cache_mb: float = 1024.0  # decode the train images once per run when their pixels fit; 0 = per epoch
    on_nonfinite: str = "stop"  # a NaN/inf loss term or gradient norm stops training; "skip" skips the step
    # Checkpoint policy (with a checkpoint dir): after every N-th epoch (0 = not by epochs) and/or once M minutes
    # passed since the last save (0 = not by time). checkpoint_optimizer=false leaves AdamW's moments out (2/3 of
    # the file for ViT-B/16): a resume then restarts them from zero and does not match an uninterrupted run.
    checkpoint_every_epochs: int = 1
    checkpoint_every_minutes: float = 0.0
    checkpoint_optimizer: bool = True
    lora: LoraParams = field(default_factory=LoraParams)  # method lora's own settings
    probe: ProbeParams = field(default_factory=ProbeParams)  # method linear_probe's own settings

    def validate(self) -> None:
        checks = {
            "method": self.method in METHODS,
            "vld_direction": self.vld_direction in ("teacher_student", "student_teacher"),
            "vld_over": self.vld_over in ("batch", "classes"),
            "precision": self.precision in PRECISIONS,
            "on_nonfinite": self.on_nonfinite in ("stop", "skip"),
            "alpha": 0.0 <= self.alpha <= 1.0,
            "alpha_grid": all(0.0 <= a <= 1.0 for a in self.alpha_grid)
            and len(set(self.alpha_grid)) == len(self.alpha_grid),
            "epochs": self.epochs >= 0,
            "batch_size": self.batch_size >= 1,
            "num_workers": self.num_workers >= 0,
            "prefetch_factor": self.prefetch_factor >= 1,
            "decode_cache_mb": self.decode_cache_mb >= 0,
            "checkpoint_every_epochs": self.checkpoint_every_epochs >= 0,
            "checkpoint_every_minutes": self.checkpoint_every_minutes >= 0,
            "logit_scale": self.logit_scale == "checkpoint"
            or (isinstance(self.logit_scale, int | float) and self.logit_scale > 0),
            "lora.rank": self.lora.rank >= 1,
            "lora.alpha": self.lora.alpha > 0,
            "lora.dropout": 0.0 <= self.lora.dropout < 1.0,
            "lora.lr": self.lora.lr > 0,
            "lora.weight_decay": self.lora.weight_decay >= 0,
            "lora.iters_per_shot": self.lora.iters_per_shot >= 0,
            "lora.ensemble_alpha": 0.0 <= self.lora.ensemble_alpha <= 1.0,
            "probe.penalty": self.probe.penalty >= 0,
            "probe.lr": self.probe.lr > 0,
            "probe.epochs": self.probe.epochs >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training setting(s): {', '.join(f'{b}={self._value(b)!r}' for b in bad)}")

    def _value(self, dotted: str) -> object:
        value = self
        for part in dotted.split("."):
            value = getattr(value, part)
        return value

    def loss_weights(self) -> dict[str, float]:
        """What each method trains with, term by term; a method or an ablation is a set of weights (0 = off). The
        added methods have losses of their own (clipcite/training/methods): none of CITE's terms."""
        weights = {"dva": self.w_dva, "scl": self.lam, "vld": self.eta, "clip": self.w_clip}
        terms = REGISTRY[self.method].cite_terms
        return {term: weight if term in terms else 0.0 for term, weight in weights.items()}

    def uses_text(self) -> bool:
        """Whether CITE's step encodes class prompts with the student (every term but L_DVA does). The added methods
        know their own needs (LoRA re-encodes all class prompts every step)."""
        weights = self.loss_weights()
        return any(weights[term] for term in ("scl", "vld", "clip"))

    def needs_teacher(self) -> bool:
        """Whether training needs the frozen teacher's image features (L_VLD on): a cache or the online teacher."""
        return self.loss_weights()["vld"] != 0
