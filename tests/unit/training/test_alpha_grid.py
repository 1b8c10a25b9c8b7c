"""``train.alpha_grid``: the weight-space ensemble's alpha chosen on the validation split after one training run
(off by default; the paper fixes 0.5). The tiny model on the demo table (CPU, seconds)."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from clipcite.config import ConfigError
from clipcite.model.clip import average_weights, load_model, load_saved
from clipcite.records import TrainSummary
from clipcite.steps import finetune, sample_splits, validate
from clipcite.tracking.model_card import version_card
from clipcite.training.alpha_grid import TIE_POINTS, alpha_rule, pick_alpha
from tests.conftest import tiny_config
from tests.support.records import SAMPLE_REPORT as BODY

SPLITS = ("splits.shots=2", "splits.protocol=fewshot", "splits.train_domains=[photo]")
TRAIN = ("train.method=ce", "train.epochs=2", "train.lr=1e-3", "train.batch_size=4")
GRID = (0.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def splits(table, tmp_path_factory):
    """Splits without their eval sets: a run that read one would fail (validation is all the grid may see)."""
    out = tmp_path_factory.mktemp("grid") / "splits"
    sample_splits.run(str(table), str(out), tiny_config(*SPLITS))
    shutil.rmtree(out / "eval")
    return out


@pytest.fixture(scope="module")
def runs(splits, tmp_path_factory):
    """The same recipe trained twice: with the grid, and without the ensemble (alpha 1) for reference."""
    out = tmp_path_factory.mktemp("grid-models")
    grid = f"train.alpha_grid=[{', '.join(map(str, GRID))}]"
    summary = finetune.run(str(splits), str(out / "grid"), tiny_config(*SPLITS, *TRAIN, grid))
    finetune.run(str(splits), str(out / "alpha1"), tiny_config(*SPLITS, *TRAIN, "train.alpha=1.0"))
    return out, summary


def test_every_alpha_is_scored_on_validation_and_the_rule_picks(runs):
    out, summary = runs
    grid = summary.alpha_grid
    assert grid.alphas == GRID and len(grid.val_top1) == len(GRID)
    assert grid.val_images == 2 * 6  # the val split's images: 2 per class
    scores = dict(zip(grid.alphas, grid.val_top1, strict=True))
    assert grid.chosen == pick_alpha(scores) == summary.alpha
    assert "lowest alpha" in grid.rule
    assert TrainSummary.read(out / "grid").alpha_grid == grid


def test_the_saved_weights_are_the_ensemble_at_the_chosen_alpha_of_one_training_run(runs, splits):
    out, summary = runs
    chosen = summary.alpha_grid.chosen
    grid_model, meta = load_saved(out / "grid")
    plain, _ = load_saved(out / "alpha1")  # the same training without an ensemble
    zeroshot = load_model("clipcite-tiny", "").model.state_dict()
    expected = average_weights(plain.model.state_dict(), zeroshot, chosen)
    saved = grid_model.model.state_dict()
    assert all(torch.allclose(saved[k], expected[k], atol=1e-6) for k in expected)
    assert meta.alpha == chosen and meta.alpha_grid.chosen == chosen
    # the saved model scores on validation what the grid recorded for its alpha
    config = tiny_config(*SPLITS, *TRAIN)
    top1, _ = validate.val_top1(grid_model, str(splits), config, "cpu")
    assert top1 == pytest.approx(summary.alpha_grid.val_top1[list(GRID).index(chosen)])
    card = version_card(name="m", version=1, meta=meta, body=BODY, decision={"role": "challenger"}, code_version="x")
    assert f"| alpha (weight-space ensemble with the zero-shot weights) | {chosen}, chosen on validation" in card


def test_the_grid_is_off_by_default_and_checked(splits, tmp_path):
    assert tiny_config().train.alpha_grid == ()
    with pytest.raises(ConfigError, match=r"alpha_grid=\(0.5, 1.5\)"):
        tiny_config("train.alpha_grid=[0.5, 1.5]")
    with pytest.raises(ConfigError, match=r"alpha_grid=\(0.5, 0.5\)"):
        tiny_config("train.alpha_grid=[0.5, 0.5]")


def test_a_method_without_an_ensemble_ignores_the_grid_and_says_so(splits, tmp_path, caplog):
    config = tiny_config(*SPLITS, "train.method=linear_probe", "train.epochs=1", "train.alpha_grid=[0.5, 1.0]")
    with caplog.at_level(logging.WARNING, logger="clipcite.training.alpha_grid"):
        summary = finetune.run(str(splits), str(tmp_path / "probe"), config)
    assert summary.alpha_grid is None
    assert "train.alpha_grid ignored: linear_probe saves no weight-space ensemble" in caplog.text


def test_without_validation_images_the_grid_names_what_to_change(table, tmp_path):
    # no split named "none", and all 6 train images are shots: the validation split is empty
    empty = ("splits.shots=6", "splits.val_split=none")
    config = tiny_config(*SPLITS, *empty, *TRAIN, "train.epochs=1", "train.alpha_grid=[0.5, 1.0]")
    manifest = sample_splits.run(str(table), str(tmp_path / "splits"), config)
    assert manifest.val_rows == 0
    with pytest.raises(ValueError, match="no validation images to choose train.alpha_grid on"):
        finetune.run(str(tmp_path / "splits"), str(tmp_path / "model"), config)
    assert not (tmp_path / "model").exists()  # nothing half-written


def test_the_alpha_grid_takes_the_best_validation_score_and_ties_go_to_the_lower_alpha():
    assert pick_alpha({0.3: 70.0, 0.5: 72.0, 1.0: 71.0}) == 0.5
    assert pick_alpha({1.0: 72.0, 0.5: 71.95, 0.3: 70.0}) == 0.5  # within 0.1 points: more zero-shot weight
    assert pick_alpha({1.0: 72.0, 0.5: 72.0 - TIE_POINTS - 0.01}) == 1.0  # just outside: no tie
    assert "lowest alpha" in alpha_rule() and f"{TIE_POINTS}" in alpha_rule()
    with pytest.raises(ValueError, match="train.alpha_grid is empty"):
        pick_alpha({})
