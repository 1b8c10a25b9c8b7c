"""The CLIP-CITE loss terms (method.md "Loss terms"). Pure functions on feature tensors; per-sample means.

Shapes: N images in a batch, D feature dimension, C classes, M columns of a distillation distribution (N batch
texts by default, or C class prompts).
"""

from __future__ import annotations

import functools
import operator

import torch
import torch.nn.functional as F

DEFAULT_SCALE = 100.0  # CLIP's logit scale, fixed (method.md "Notation", decision)


def similarity_logits(a: torch.Tensor, b: torch.Tensor, logit_scale: float = DEFAULT_SCALE) -> torch.Tensor:
    """``s * cos(a_i, b_j)``: [N, D] x [M, D] -> [N, M]."""
    return logit_scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def dva_loss(
    image_features: torch.Tensor,
    class_weights: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: float = DEFAULT_SCALE,
) -> torch.Tensor:
    """L_DVA: cross-entropy of ``s * cos(f_I(x_i), W_c)`` over the C classes. [N,D], [C,D], [N] -> scalar."""
    return F.cross_entropy(similarity_logits(image_features, class_weights, logit_scale), labels)


def scl_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: float = DEFAULT_SCALE,
) -> torch.Tensor:
    """L_SCL: class-aware image-text contrastive loss. [N,D], [N,D] (prompt of labels[i]), [N] -> scalar.

    Mask M_ij = 1 if j == i or y_j != y_i: the own pair is the positive, other same-class pairs are dropped from
    the denominator (neither positive nor negative). Image->text and text->image means are added (decision), so with
    no repeated class this is FLYP/CLIP's two cross-entropies summed.
    """
    logits = similarity_logits(image_features, text_features, logit_scale)
    same_class = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    masked = logits.masked_fill(same_class & ~eye, float("-inf"))
    target = torch.arange(len(labels), device=labels.device)
    return F.cross_entropy(masked, target) + F.cross_entropy(masked.T, target)


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float = DEFAULT_SCALE
) -> torch.Tensor:
    """Plain CLIP contrastive loss as FLYP uses it: mean of the two directions, every other pair a negative."""
    logits = similarity_logits(image_features, text_features, logit_scale)
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def vld_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, direction: str = "teacher_student"
) -> torch.Tensor:
    """L_VLD: mean over rows of a KL divergence between row softmaxes. [N,M], [N,M] -> scalar.

    ``teacher_student`` is KL(Q || P) (standard distillation, the decision); ``student_teacher`` is KL(P || Q),
    the paper's literal notation. The teacher side carries no gradient.
    """
    log_p = F.log_softmax(student_logits, dim=-1)
    log_q = F.log_softmax(teacher_logits.detach(), dim=-1)
    if direction == "teacher_student":
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    elif direction == "student_teacher":
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    else:
        raise ValueError(f"vld direction must be 'teacher_student' or 'student_teacher', got {direction!r}")
    return kl.mean()


def cite_loss(
    image_features: torch.Tensor,
    labels: torch.Tensor,
    *,
    class_weights: torch.Tensor | None = None,
    text_features: torch.Tensor | None = None,
    student_vld_logits: torch.Tensor | None = None,
    teacher_vld_logits: torch.Tensor | None = None,
    w_dva: float = 1.0,
    lam: float = 0.7,
    eta: float = 0.1,
    logit_scale: float = DEFAULT_SCALE,
    vld_direction: str = "teacher_student",
) -> dict[str, torch.Tensor]:
    """L = w_dva * L_DVA + lam * L_SCL + eta * L_VLD, each term returned by name with ``total``.

    A term is computed when its inputs are given; a term with a nonzero weight and missing inputs is an error, so
    an ablation is a weight set to 0. ``student_vld_logits`` defaults to the batch matrix S built from
    ``image_features`` and ``text_features``; pass it (and the teacher's) over all C prompts for that variant.
    """
    terms: dict[str, torch.Tensor] = {}
    if class_weights is not None:
        terms["dva"] = dva_loss(image_features, class_weights, labels, logit_scale)
    if text_features is not None:
        terms["scl"] = scl_loss(image_features, text_features, labels, logit_scale)
        if student_vld_logits is None:
            student_vld_logits = similarity_logits(image_features, text_features, logit_scale)
    if teacher_vld_logits is not None:
        if student_vld_logits is None:
            raise ValueError("L_VLD needs text_features or student_vld_logits")
        terms["vld"] = vld_loss(student_vld_logits, teacher_vld_logits, vld_direction)
    weights = {"dva": w_dva, "scl": lam, "vld": eta}
    for name, weight in weights.items():
        if weight != 0 and name not in terms:
            raise ValueError(f"loss term {name!r} has weight {weight} but its inputs were not given")
    if not terms:
        raise ValueError("no loss term has its inputs: pass image features with class weights or text features")
    terms["total"] = functools.reduce(operator.add, [weights[name] * value for name, value in terms.items()])
    return terms
