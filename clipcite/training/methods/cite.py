"""CLIP-CITE and the baselines that are sets of its loss weights: ``ce`` (L_DVA only), ``flyp`` (CLIP contrastive
on class prompts) and ``cite`` (L_DVA + lam L_SCL + eta L_VLD), method.md "Loss terms". Trains every weight of both
encoders and the head W; saves the weight-space ensemble with the zero-shot weights (method.md "Weight-space
ensemble").
"""

from __future__ import annotations

import torch

from clipcite.model.clip import average_weights
from clipcite.train_params import FitParams
from clipcite.training import distributed
from clipcite.training.losses import cite_loss, clip_loss, similarity_logits
from clipcite.training.methods.common import Batch, Saved, Setup, Trainer


def trainer(setup: Setup) -> Trainer:
    """Both encoders and W (initialised at the teacher's prompt features) train; logit_scale stays fixed."""
    params, model = setup.params, setup.student.model
    head = torch.nn.Parameter(setup.teacher_text.clone(), requires_grad=params.train_head)
    groups = param_groups(model, head, params.weight_decay)
    towers = distributed.data_parallel(model, uses_text=params.uses_text())

    def loss(batch: Batch) -> dict[str, torch.Tensor]:
        teacher_image = None
        if params.needs_teacher():
            teacher_image = teacher_images(setup.cache, setup.teacher, batch.epoch, batch.index, batch.images)
        images, labels = batch.images, batch.labels
        return batch_losses(
            towers, images, labels, setup.tokens, head, setup.teacher_text, teacher_image, params, setup.scale
        )

    def finish() -> Saved:
        final = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return Saved(average_weights(final, setup.zeroshot_state, params.alpha))

    steps = params.epochs * setup.steps_per_epoch
    return Trainer(groups, loss, finish, model, head, params.epochs, steps, params.alpha)


def batch_losses(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    tokens: torch.Tensor,
    head: torch.Tensor,
    teacher_text: torch.Tensor,
    teacher_image: torch.Tensor | None,
    params: FitParams,
    scale: float,
) -> dict[str, torch.Tensor]:
    """Every loss term of one batch by name, with ``total`` (method.md "Loss terms"); FLYP is plain CLIP loss.

    Text features are encoded once per class present in the batch (SCL pairs each image with its class prompt) or
    for all C prompts when L_VLD's distributions run over the classes. Under several ranks (``model`` wrapped by
    :func:`clipcite.training.distributed.data_parallel`) every term runs over the global batch: labels, image features
    and teacher features are gathered from all ranks, the text features of the global batch's classes are encoded on
    each rank, so each rank holds the one-process loss.
    """
    weights = params.loss_weights()
    sizes = distributed.part_sizes(len(labels))
    labels = distributed.gather(labels, sizes)
    over_classes = params.vld_over == "classes" and bool(weights["vld"])
    text_tokens = inverse = None
    if params.uses_text():
        classes, inverse = labels.unique(return_inverse=True)
        text_tokens = tokens if over_classes else tokens[classes]
    image_features, text_out = distributed.encode(model, images, text_tokens)
    image_features = distributed.gather(image_features, sizes)
    if teacher_image is not None:
        teacher_image = distributed.gather(teacher_image, sizes)
    all_text = text_out if over_classes else None
    text_features = None if text_out is None else (text_out[labels] if over_classes else text_out[inverse])
    terms: dict[str, torch.Tensor] = {}
    if weights["dva"] or weights["scl"] or weights["vld"]:
        teacher_logits = student_logits = None
        if teacher_image is not None:
            columns = teacher_text if all_text is not None else teacher_text[labels]
            teacher_logits = similarity_logits(teacher_image, columns, scale)
            if all_text is not None:
                student_logits = similarity_logits(image_features, all_text, scale)
        terms = cite_loss(
            image_features,
            labels,
            class_weights=head if weights["dva"] else None,
            text_features=text_features,
            student_vld_logits=student_logits,
            teacher_vld_logits=teacher_logits,
            w_dva=weights["dva"],
            lam=weights["scl"],
            eta=weights["vld"],
            logit_scale=scale,
            vld_direction=params.vld_direction,
        )
    if weights["clip"]:  # FLYP's CLIP contrastive loss on the batch's class prompts, a weighted term like the others
        terms["clip"] = clip_loss(image_features, text_features, scale)
        weighted = weights["clip"] * terms["clip"]
        terms["total"] = terms["total"] + weighted if "total" in terms else weighted
    return terms


def teacher_images(cache, teacher, epoch: int, index: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The frozen teacher's image features of this batch's crops: replayed from the cache, or computed."""
    if cache is not None:
        return cache.image[epoch, index].to(images.device)
    with torch.no_grad():
        return teacher.model.eval().encode_image(images, normalize=True).float()


def param_groups(model: torch.nn.Module, head: torch.nn.Parameter, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only, not on gains, biases, embeddings' scale or logit_scale (open_clip's rule)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if name in ("logit_scale", "logit_bias"):
            p.requires_grad_(False)  # fixed scale (decision)
            continue
        (decay if p.ndim >= 2 and "ln" not in name and "bn" not in name else no_decay).append(p)
    if head.requires_grad:
        decay.append(head)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
