"""Teacher cache equivalence, cache refusal, training methods and exact resume (CPU, fixed seeds)."""

import dataclasses
import math

import pytest
import torch
from safetensors.torch import load_file

from clipcite.data.crops import crop_params, model_input
from clipcite.data.loading import CropDataset
from clipcite.model.clip import load_model
from clipcite.training.loop import FitParams, fit
from clipcite.training.losses import similarity_logits, vld_loss
from clipcite.training.teacher_cache import CacheMismatchError, build_cache, check_cache, load_cache, save_cache
from tests.conftest import Interrupt, stop_in_epoch

PARAMS = FitParams(epochs=2, batch_size=8, lr=1e-4)


def make_cache(rows, prompts, teacher, epochs=2, seed=1):
    return build_cache(
        teacher, rows, prompts, seed=seed, epochs=epochs, crop_scale=PARAMS.crop_scale, crop_ratio=PARAMS.crop_ratio
    )


def run_fit(rows, prompts, params=PARAMS, **kwargs):
    logged = []
    result = fit(
        load_model("clipcite-tiny", ""),
        rows,
        prompts,
        params,
        seed=1,
        log_fn=lambda m, s: logged.append((s, m)),
        **kwargs,
    )
    return result, logged


def test_crop_params_are_deterministic_and_vary_by_epoch():
    a = crop_params(64, 48, 1, "x", 0)
    assert a == crop_params(64, 48, 1, "x", 0)
    assert len({crop_params(64, 48, 1, "x", epoch) for epoch in range(10)}) > 5  # a new crop each epoch
    assert len({crop_params(64, 48, seed, "x", 0) for seed in range(10)}) > 5  # and per seed
    top, left, h, w = a
    assert top >= 0 and top + h <= 48 and left >= 0 and left + w <= 64


def test_cached_teacher_gives_the_same_losses_as_the_online_teacher(train_rows):
    rows, prompts = train_rows
    cache = make_cache(rows, prompts, load_model("clipcite-tiny", ""))
    _, with_cache = run_fit(rows, prompts, cache=cache)
    _, online = run_fit(rows, prompts, teacher=load_model("clipcite-tiny", ""))
    assert len(rows) == 12  # 3 base classes x 4 shots
    assert len(with_cache) == len(online) == 2 * 2  # 2 batches of <= 8, 2 epochs
    for (step_a, a), (step_b, b) in zip(with_cache, online, strict=True):
        assert step_a == step_b
        for term in ("dva", "scl", "vld", "total"):
            assert a[term] == pytest.approx(b[term], rel=1e-3), (step_a, term)
    assert with_cache[0][1]["vld"] == pytest.approx(0.0, abs=1e-4)  # student == teacher at the first step


def test_cache_from_another_model_or_seed_is_refused(train_rows):
    rows, prompts = train_rows
    cache = make_cache(rows, prompts, load_model("clipcite-tiny", "", init_seed=7), epochs=1)
    common = dict(
        seed=1,
        epochs=1,
        ids=[r["id"] for r in rows],
        prompts=prompts,
        crop_scale=PARAMS.crop_scale,
        crop_ratio=PARAMS.crop_ratio,
    )
    with pytest.raises(CacheMismatchError, match=r"made with model 'random:clipcite-tiny:7'.*uses 'random:clipc"):
        check_cache(cache, identity="random:clipcite-tiny:0", **common)
    with pytest.raises(CacheMismatchError, match="seed 1, training uses seed 2"):
        check_cache(cache, identity=cache.meta.identity, **{**common, "seed": 2})
    with pytest.raises(CacheMismatchError, match="1 epoch.*needs 3"):
        check_cache(cache, identity=cache.meta.identity, **{**common, "epochs": 3})


def test_resumed_run_ends_with_the_same_weights(train_rows, tmp_path):
    rows, prompts = train_rows
    teacher = load_model("clipcite-tiny", "")
    params = dataclasses.replace(PARAMS, epochs=3)
    full, _ = run_fit(rows, prompts, params, teacher=teacher)

    stop_in_epoch_three = stop_in_epoch(3)

    with pytest.raises(Interrupt):
        fit(
            load_model("clipcite-tiny", ""),
            rows,
            prompts,
            params,
            seed=1,
            teacher=teacher,
            checkpoint_dir=tmp_path,
            log_fn=stop_in_epoch_three,
        )
    assert (tmp_path / "last.pt").is_file()
    resumed, logged = run_fit(rows, prompts, params, teacher=teacher, checkpoint_dir=tmp_path)
    assert [s for s, _ in logged] == [5, 6]  # only epoch 3 (2 batches) ran again
    assert resumed.steps == full.steps == 6
    for key, value in full.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key


def test_checkpoint_of_another_run_is_refused(train_rows, tmp_path):
    rows, prompts = train_rows
    params = dataclasses.replace(PARAMS, epochs=1, eta=0.0)
    fit(load_model("clipcite-tiny", ""), rows, prompts, params, seed=1, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="another run"):
        fit(
            load_model("clipcite-tiny", ""),
            rows,
            prompts,
            dataclasses.replace(params, lr=1e-3),
            seed=1,
            checkpoint_dir=tmp_path,
        )


@pytest.mark.parametrize(
    ("method", "terms"),
    [("ce", {"dva"}), ("flyp", {"clip"}), ("cite", {"dva", "scl", "vld"})],
)
def test_methods_log_their_terms_and_change_the_weights(train_rows, method, terms):
    rows, prompts = train_rows
    params = dataclasses.replace(PARAMS, method=method, epochs=1, alpha=1.0)
    result, logged = run_fit(rows, prompts, params, teacher=load_model("clipcite-tiny", ""))
    assert set(logged[0][1]) == terms | {"total", "grad_norm", "lr", "epoch"}
    start = load_model("clipcite-tiny", "").model.state_dict()
    assert not torch.equal(result.state_dict["visual.conv1.weight"], start["visual.conv1.weight"])
    text_key = "transformer.resblocks.0.mlp.c_fc.weight"
    text_moved = not torch.equal(result.state_dict[text_key], start[text_key])
    assert text_moved == (method != "ce")  # L_DVA gives the text encoder no gradient


def test_zeroshot_and_alpha_zero_return_the_pretrained_weights(train_rows):
    rows, prompts = train_rows
    start = load_model("clipcite-tiny", "").model.state_dict()
    for params in (
        dataclasses.replace(PARAMS, method="zeroshot"),
        dataclasses.replace(PARAMS, epochs=1, alpha=0.0, eta=0.0),
    ):
        result, _ = run_fit(rows, prompts, params)
        assert all(torch.equal(result.state_dict[k], start[k]) for k in start)


def _lrs_used(monkeypatch) -> list[float]:
    """The learning rate of each optimizer step, read when the step is taken."""
    used: list[float] = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return used


WARMUP = dataclasses.replace(PARAMS, method="ce", eta=0.0, lam=0.0, epochs=2, warmup_steps=2)  # 2 x 2 steps


def test_warmup_then_cosine_learning_rate_per_step(train_rows, monkeypatch):
    rows, prompts = train_rows
    used = _lrs_used(monkeypatch)
    run_fit(rows, prompts, WARMUP)
    # linear warmup (step + 1) / warmup over 2 steps, then half a cosine over the remaining 2: 1, cos(pi/2) terms
    assert used == pytest.approx([1e-4 * f for f in (0.5, 1.0, 1.0, 0.5)], rel=1e-9)
    no_warmup = _lrs_used(monkeypatch)
    run_fit(rows, prompts, dataclasses.replace(WARMUP, warmup_steps=0))
    assert no_warmup == pytest.approx([1e-4 * (1 + math.cos(math.pi * s / 4)) / 2 for s in range(4)], rel=1e-9)


def test_logged_learning_rate_is_the_one_each_step_used(train_rows, monkeypatch):
    rows, prompts = train_rows
    used = _lrs_used(monkeypatch)
    _, logged = run_fit(rows, prompts, WARMUP)
    assert [m["lr"] for _, m in logged] == pytest.approx(used, rel=1e-9)


def test_frozen_head_keeps_the_teacher_text_features(train_rows, tmp_path):
    rows, prompts = train_rows
    cache = make_cache(rows, prompts, load_model("clipcite-tiny", ""), epochs=1)
    heads = {}
    for train_head in (False, True):
        params = dataclasses.replace(PARAMS, method="ce", epochs=1, train_head=train_head)
        run_fit(rows, prompts, params, cache=cache, checkpoint_dir=tmp_path / str(train_head))
        heads[train_head] = torch.load(tmp_path / str(train_head) / "last.pt", weights_only=True)["head"]
    assert torch.equal(heads[False], cache.text)  # the "FrozenTC" ablation: W stays the class prompts' features
    assert not torch.allclose(heads[True], cache.text)


def _first_step_vld(rows, prompts, cache, vld_over: str) -> float:
    """L_VLD of the first step computed here: one batch holds every row (order does not change a mean over rows)."""
    student = load_model("clipcite-tiny", "")
    model = student.model.train()
    scale = float(model.logit_scale.exp())
    labels = torch.tensor([r["label"] for r in rows])
    dataset = CropDataset(rows, student.preprocess_cfg, cache.boxes)
    with torch.no_grad():
        pixels = torch.stack([dataset[i][1] for i in range(len(rows))])
        image = model.encode_image(model_input(pixels, student.preprocess_cfg, "cpu"))
        text = model.encode_text(student.tokenizer(prompts))
    teacher_image = cache.image[0]
    if vld_over == "classes":  # every class prompt is a column
        student_logits = similarity_logits(image, text, scale)
        teacher_logits = similarity_logits(teacher_image, cache.text, scale)
    else:  # the batch's own texts: one column per image, its class's prompt
        student_logits = similarity_logits(image, text[labels], scale)
        teacher_logits = similarity_logits(teacher_image, cache.text[labels], scale)
    return float(vld_loss(student_logits, teacher_logits))


def test_vld_over_classes_distils_every_class_prompt(train_rows):
    rows, prompts = train_rows
    # Classes in unequal numbers (4, 2, 1): with equal numbers both choices give the same KL (a class's columns
    # repeat, and the repeats cancel), so the test could not tell them apart.
    rows = [r for label, count in ((0, 4), (1, 2), (2, 1)) for r in [r for r in rows if r["label"] == label][:count]]
    cache = make_cache(rows, prompts, load_model("clipcite-tiny", "", init_seed=7), epochs=1)  # a teacher unlike us
    logged = {}
    for vld_over in ("batch", "classes"):
        params = dataclasses.replace(PARAMS, epochs=1, batch_size=16, vld_over=vld_over)
        _, steps = run_fit(rows, prompts, params, cache=cache)
        logged[vld_over] = steps[0][1]["vld"]
        assert logged[vld_over] == pytest.approx(_first_step_vld(rows, prompts, cache, vld_over), rel=1e-4), vld_over
    assert logged["classes"] != pytest.approx(logged["batch"], rel=1e-3)


def test_grad_clip_limits_the_update_and_a_loose_clip_changes_nothing(train_rows):
    rows, prompts = train_rows
    start = load_model("clipcite-tiny", "").model.state_dict()
    base = dataclasses.replace(PARAMS, method="ce", epochs=1, alpha=1.0, weight_decay=0.0)

    def moved(grad_clip: float) -> tuple[float, dict]:
        result, _ = run_fit(rows, prompts, dataclasses.replace(base, grad_clip=grad_clip))
        state = result.state_dict
        return max(float((state[k] - start[k]).abs().max()) for k in start if start[k].is_floating_point()), state

    free, free_state = moved(0.0)
    clipped, _ = moved(1e-12)  # gradients far below Adam's eps: the steps shrink to almost nothing
    assert free > 1e-5 and clipped < free / 100
    _, loose_state = moved(1e9)  # a clip the gradient never reaches leaves the run as it was
    assert all(torch.equal(loose_state[k], free_state[k]) for k in free_state)


def test_float16_teacher_cache_halves_storage_and_trains_like_float32(train_rows, tmp_path):
    rows, prompts = train_rows
    teacher = load_model("clipcite-tiny", "", init_seed=7)
    caches = {}
    for dtype in ("float32", "float16"):
        cache = build_cache(
            teacher,
            rows,
            prompts,
            seed=1,
            epochs=1,
            crop_scale=PARAMS.crop_scale,
            crop_ratio=PARAMS.crop_ratio,
            dtype=dtype,
        )
        save_cache(cache, tmp_path / dtype)
        stored = load_file(str(tmp_path / dtype / "teacher.safetensors"))
        assert (stored["image"].dtype, stored["text"].dtype) == (getattr(torch, dtype),) * 2
        caches[dtype] = load_cache(tmp_path / dtype)
    assert caches["float16"].meta.dtype == "float16" and caches["float16"].image.dtype == torch.float32  # read back
    assert torch.equal(caches["float16"].image, caches["float32"].image.half().float())  # rounded, nothing else
    params = dataclasses.replace(PARAMS, epochs=1)
    _, half = run_fit(rows, prompts, params, cache=caches["float16"])
    _, full = run_fit(rows, prompts, params, cache=caches["float32"])
    for (_, a), (_, b) in zip(half, full, strict=True):
        assert a["vld"] == pytest.approx(b["vld"], rel=1e-2, abs=1e-4) and a["total"] == pytest.approx(
            b["total"], rel=1e-3
        )
