"""The input path and the training loop's costs: one DataLoader per run with persistent
workers and a decode-once image cache gives the same crops, batches and weights as the per-epoch path it replaced;
the teacher cache and evaluation come out the same with and without workers; AdamW's implementation follows the
device; the checkpoint policy writes where it says and a resume without optimizer state is allowed but announced."""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import pytest
import torch
from torch.utils.data import DataLoader

from clipcite.data.loading import CropDataset, EpochBatches, crop_boxes, decode_all, image_size, loader_options
from clipcite.data.table import read_table
from clipcite.evaluation.predict import predict
from clipcite.model.clip import load_model
from clipcite.training.checkpoints import CHECKPOINT, checkpoint_due
from clipcite.training.loop import FitParams, adamw, fit
from clipcite.training.teacher_cache import build_cache
from tests.conftest import Interrupt, stop_in_epoch

PARAMS = FitParams(epochs=3, batch_size=8, lr=1e-4, eta=0.0)  # no teacher needed: the input path is under test


def _old_order(n: int, seed: int, epoch: int) -> list[int]:
    """The batch order rule as fit had it before the loader moved to clipcite.data.loading (kept here literally)."""
    mixed = int.from_bytes(hashlib.sha256(f"order:{seed}:{epoch}".encode()).digest()[:8], "little")
    return torch.randperm(n, generator=torch.Generator().manual_seed(mixed)).tolist()


def test_persistent_loader_with_decode_cache_yields_the_per_epoch_batches(train_rows, tiny):
    rows, _ = train_rows
    epochs, batch = 3, 8
    boxes = crop_boxes(rows, 1, epochs, PARAMS.crop_scale, PARAMS.crop_ratio)
    decoded = decode_all(rows, [image_size(r) for r in rows], budget_mb=64)
    assert decoded is not None and len(decoded) == len(rows)
    # the per-epoch path as it was: a fresh loader each epoch over a dataset that decodes every time
    old = CropDataset(rows, tiny.preprocess_cfg, boxes)
    expected = []
    for epoch in range(epochs):
        old.epoch = epoch
        order = _old_order(len(rows), 1, epoch)
        batches = [order[i : i + batch] for i in range(0, len(rows), batch)]
        expected.append(list(DataLoader(old, batch_sampler=batches)))
    # the new one: built once, two persistent workers, pixels decoded once
    sampler = EpochBatches(len(rows), batch, seed=1)
    new = DataLoader(
        CropDataset(rows, tiny.preprocess_cfg, boxes, decoded=decoded),
        batch_sampler=sampler,
        **loader_options(2, 2, "cpu"),
    )
    for epoch in range(epochs):
        sampler.epoch = epoch
        got = list(new)
        assert len(got) == len(expected[epoch])
        for (i_new, x_new, y_new), (i_old, x_old, y_old) in zip(got, expected[epoch], strict=True):
            assert torch.equal(i_new, i_old) and torch.equal(y_new, y_old)
            assert torch.equal(x_new, x_old), f"epoch {epoch}: crops differ"
    assert new._iterator is not None and new._iterator._workers, "the workers persist across epochs"


def test_decode_cache_stays_off_beyond_its_budget(train_rows):
    rows, _ = train_rows
    sizes = [image_size(r) for r in rows]
    assert decode_all(rows, sizes, budget_mb=1e-6) is None
    assert decode_all(rows, sizes, budget_mb=0) is None


def test_fit_gives_the_same_weights_with_workers_and_decode_cache(train_rows):
    rows, prompts = train_rows
    results = {}
    for workers, cache_mb in ((0, 0.0), (2, 64.0)):
        params = dataclasses.replace(PARAMS, num_workers=workers, decode_cache_mb=cache_mb)
        results[workers] = fit(load_model("clipcite-tiny", ""), rows, prompts, params, seed=1)
    for key, value in results[0].state_dict.items():
        assert torch.equal(value, results[2].state_dict[key]), key


def test_teacher_cache_is_the_same_with_workers_and_decode_cache(train_rows):
    rows, prompts = train_rows
    teacher = load_model("clipcite-tiny", "")
    settings = {"seed": 1, "epochs": 2, "crop_scale": PARAMS.crop_scale, "crop_ratio": PARAMS.crop_ratio}
    plain = build_cache(teacher, rows, prompts, batch_size=8, **settings)
    fast = build_cache(teacher, rows, prompts, batch_size=8, num_workers=2, decode_cache_mb=64.0, **settings)
    assert torch.equal(plain.image, fast.image) and torch.equal(plain.boxes, fast.boxes)


def test_evaluate_predicts_the_same_with_workers(table, tiny):
    rows = read_table(str(table)).to_pylist()[:24]
    prompts = [f"a photo of class {i}." for i in range(max(int(r["label"]) for r in rows) + 1)]
    serial = predict(tiny, rows, prompts, batch_size=7, num_workers=0)
    parallel = predict(tiny, rows, prompts, batch_size=7, num_workers=2)
    assert torch.equal(serial[0], parallel[0]) and torch.equal(serial[1], parallel[1])


def test_adamw_is_fused_on_cuda_and_foreach_elsewhere():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(3))], "weight_decay": 0.0}]
    assert adamw(groups, 1e-3, "cpu").defaults["foreach"] is True
    assert adamw([{"params": [torch.nn.Parameter(torch.zeros(3))]}], 1e-3, "cuda:0").defaults["fused"] is True


def test_checkpoint_policy_by_epochs_and_minutes():
    every_two = FitParams(checkpoint_every_epochs=2)
    assert [e for e in range(1, 6) if checkpoint_due(every_two, e, 0.0)] == [2, 4]
    by_time = FitParams(checkpoint_every_epochs=0, checkpoint_every_minutes=5)
    assert not checkpoint_due(by_time, 1, 299.0) and checkpoint_due(by_time, 1, 300.0)
    assert not checkpoint_due(FitParams(checkpoint_every_epochs=0), 3, 1e9)  # neither: never
    with pytest.raises(ValueError, match="checkpoint_every_epochs"):
        FitParams(checkpoint_every_epochs=-1).validate()


def test_every_second_epoch_writes_checkpoints_at_two_and_four_only(train_rows, tmp_path):
    rows, prompts = train_rows
    params = dataclasses.replace(PARAMS, epochs=5, checkpoint_every_epochs=2)
    saved = []

    def record(path):
        saved.append(torch.load(path, map_location="cpu", weights_only=True)["epoch"])

    fit(load_model("clipcite-tiny", ""), rows, prompts, params, seed=1, checkpoint_dir=tmp_path, on_checkpoint=record)
    assert saved == [2, 4]


def test_resume_without_optimizer_state_continues_and_says_it_is_not_exact(train_rows, tmp_path, caplog):
    rows, prompts = train_rows
    light = dataclasses.replace(PARAMS, epochs=2, checkpoint_optimizer=False)
    full_state = tmp_path / "full"
    fit(load_model("clipcite-tiny", ""), rows, prompts, dataclasses.replace(light, checkpoint_optimizer=True),
        seed=1, checkpoint_dir=full_state)  # fmt: skip
    fit(load_model("clipcite-tiny", ""), rows, prompts, light, seed=1, checkpoint_dir=tmp_path / "light")
    without = torch.load(tmp_path / "light" / CHECKPOINT, map_location="cpu", weights_only=True)
    assert without["optimizer"] is None and without["epoch"] == 2
    assert (tmp_path / "light" / CHECKPOINT).stat().st_size < (full_state / CHECKPOINT).stat().st_size / 2

    # the same run with 3 epochs is another run (the schedule differs); resume from epoch 2 of a 3-epoch run instead
    longer = dataclasses.replace(light, epochs=3)

    stop_in_epoch_three = stop_in_epoch(3)

    with pytest.raises(Interrupt):
        fit(load_model("clipcite-tiny", ""), rows, prompts, longer, seed=1, checkpoint_dir=tmp_path / "r",
            log_fn=stop_in_epoch_three)  # fmt: skip
    steps = []
    with caplog.at_level(logging.WARNING, logger="clipcite.training.checkpoints"):
        # another policy (every epoch, optimizer kept) resumes the same checkpoint: policy is not part of the run
        resumed = fit(load_model("clipcite-tiny", ""), rows, prompts, dataclasses.replace(longer,
                      checkpoint_optimizer=True), seed=1, checkpoint_dir=tmp_path / "r",
                      log_fn=lambda m, s: steps.append(s))  # fmt: skip
    assert steps == [5, 6] and resumed.steps == 6  # only epoch 3 ran again
    assert "no optimizer state" in caplog.text
