"""The loss temperature: the checkpoint's own learned scale by default, a number when set."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch

from clipcite.config import load_config
from clipcite.model.clip import load_model
from clipcite.training.loop import FitParams, fit, resolve_logit_scale
from tests.conftest import tiny_config

TOY = ("toyclip", "clipcite:toyworld/toyclip.safetensors")


def test_default_is_the_checkpoints_own_scale():
    toy = load_model(*TOY).model
    assert FitParams().logit_scale == "checkpoint"
    assert resolve_logit_scale("checkpoint", toy) == pytest.approx(math.exp(3.2931), rel=1e-4)  # 26.93, pretrained
    assert resolve_logit_scale(100.0, toy) == 100.0


def test_openai_weights_give_100_either_way():
    """OpenAI's checkpoints store logit_scale = ln(100) (their training clamped it there), so the default and the
    paper's fixed 100 agree for them. The real weights cannot be downloaded here: the tiny model gets that value."""
    model = load_model("clipcite-tiny", "").model
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))
    assert resolve_logit_scale("checkpoint", model) == pytest.approx(100.0, rel=1e-6)
    assert resolve_logit_scale(load_config("paper_vitb16").train.logit_scale, model) == 100.0


def test_model_without_a_scale_falls_back_to_100(caplog):
    with caplog.at_level(logging.INFO, logger="clipcite.training.loop"):
        assert resolve_logit_scale("checkpoint", torch.nn.Linear(2, 2)) == 100.0
    assert "no logit_scale" in caplog.text


def test_fit_trains_with_the_resolved_scale(train_rows):
    """One step with the default equals one step with the scale written out, and differs from 100."""
    rows, prompts = train_rows
    own = float(load_model("clipcite-tiny", "").model.logit_scale.detach().exp())  # 1/0.07 for a random init

    def first_losses(scale):
        params = tiny_config("train.epochs=1", "train.batch_size=8", "train.eta=0").train
        params = dataclasses.replace(params, logit_scale=scale)
        logged = []
        result = fit(
            load_model("clipcite-tiny", ""), rows[:8], prompts, params, seed=1, log_fn=lambda m, s: logged.append(m)
        )
        return result.logit_scale, logged[0]

    scale, default = first_losses("checkpoint")
    assert scale == pytest.approx(own)
    _, explicit = first_losses(own)
    _, hundred = first_losses(100.0)
    assert default["total"] == pytest.approx(explicit["total"], rel=1e-6)
    assert default["total"] != pytest.approx(hundred["total"], rel=1e-3)
