"""Model loading paths, weight-space averaging, saving and loading fine-tuned models."""

import hashlib
import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from clipcite.model.clip import average_weights, load_model, load_saved, save_model
from tests.support.records import meta


def test_alpha_one_and_zero_return_the_originals_exactly(tiny):
    ft = {k: v + 0.123 if v.is_floating_point() else v for k, v in tiny.model.state_dict().items()}
    zs = tiny.model.state_dict()
    one, zero = average_weights(ft, zs, 1.0), average_weights(ft, zs, 0.0)
    assert all(torch.equal(one[k], ft[k]) for k in ft)
    assert all(torch.equal(zero[k], zs[k]) for k in zs)
    half = average_weights(ft, zs, 0.5)
    key = "visual.conv1.weight"
    assert torch.allclose(half[key], zs[key] + 0.0615, atol=1e-6)


def test_averaging_checks_keys_and_shapes(tiny):
    zs = tiny.model.state_dict()
    ft = dict(zs)
    ft.pop("logit_scale")
    with pytest.raises(ValueError, match="keys differ.*logit_scale"):
        average_weights(ft, zs, 0.5)
    ft = {**zs, "logit_scale": torch.zeros(3)}
    with pytest.raises(ValueError, match="shape"):
        average_weights(ft, zs, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        average_weights(zs, zs, 1.5)


def test_random_init_is_seeded_and_identity_differs():
    a, b, c = (load_model("clipcite-tiny", "", init_seed=s) for s in (0, 0, 1))
    assert a.identity == b.identity != c.identity
    assert torch.equal(a.model.visual.conv1.weight, b.model.visual.conv1.weight)
    assert not torch.equal(a.model.visual.conv1.weight, c.model.visual.conv1.weight)


def test_local_checkpoints_safetensors_and_pt_with_hash_identity(tiny, tmp_path):
    state = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    st, pt = tmp_path / "w.safetensors", tmp_path / "w.pt"
    save_file(state, st)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, pt)
    for path in (st, pt):
        loaded = load_model("clipcite-tiny", str(path))
        assert loaded.identity == f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
        assert torch.equal(loaded.model.visual.conv1.weight, tiny.model.visual.conv1.weight)


def test_architecture_from_a_json_file_and_an_unknown_name_refused(tmp_path):
    cfg = json.loads(open_clip.get_model_config("clipcite-tiny").__repr__().replace("'", '"').replace("True", "true"))
    cfg["vision_cfg"]["layers"] = 1
    path = tmp_path / "tiny-one-layer.json"
    path.write_text(json.dumps(cfg))
    loaded = load_model(str(path), "")
    assert loaded.name == "tiny-one-layer" and len(loaded.model.visual.transformer.resblocks) == 1
    with pytest.raises(ValueError, match="unknown architecture"):
        load_model("no-such-arch", "")


def test_saved_model_round_trips_and_loads_in_plain_open_clip(tiny, tmp_path):
    state = {k: v + 1 if v.is_floating_point() else v for k, v in tiny.model.state_dict().items()}
    written = meta(arch=tiny.name, base_identity=tiny.identity, alpha=0.5, classnames=["a", "b"], template="a {}.")
    save_model(tiny, state, tmp_path / "m", written)
    loaded, saved = load_saved(tmp_path / "m")
    assert saved.alpha == 0.5 and saved.classnames == ("a", "b") and saved.base_identity == tiny.identity
    assert saved == written
    assert torch.equal(loaded.model.visual.conv1.weight, state["visual.conv1.weight"])
    plain = open_clip.create_model(f"local-dir:{tmp_path / 'm'}")
    assert torch.equal(plain.visual.conv1.weight, state["visual.conv1.weight"])


def test_a_model_load_keeps_open_clips_info_lines_out_of_the_log(caplog):
    import logging

    from clipcite.model.clip import load_model

    with caplog.at_level(logging.INFO):
        load_model("clipcite-tiny")
        logging.info("a root record outside a model load")  # the filter is scoped to the load
    infos = [r.getMessage() for r in caplog.records if r.name == "root" and r.levelno == logging.INFO]
    assert infos == ["a root record outside a model load"]  # open_clip's warnings still pass
