"""Run configuration (clipcite/config.py): presets load and overrides apply; an unknown key, a wrong type or a
malformed override is a ConfigError naming the key (and the user's override, not the preset it was applied to)."""

import pytest

from clipcite.cli import main
from clipcite.config import ConfigError, load_config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=1e-4x", "override train.lr=1e-4x: train.lr: expected float, got '1e-4x'"),
        ("train.epoch=3", "override train.epoch=3: train: unknown key(s) epoch; did you mean 'train.epochs'?"),
    ],
)
def test_a_wrong_override_is_named_as_the_users_not_the_presets(override, message, tmp_path, capsys):
    argv = ["sample-splits", "--config", "default", "--set", override, "--table", str(tmp_path), "--out", "x"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "default: train" not in err, err


def test_presets_load_and_overrides_apply():
    paper = load_config("configs/paper_vitb16.yaml")
    assert (paper.train.lr, paper.train.lam, paper.train.eta, paper.train.alpha) == (5e-6, 0.7, 0.1, 0.5)
    assert paper.batch_size_for("eurosat") == 16 and paper.batch_size_for("imagenet") == 64
    assert paper.batch_size_for("dtd") == 32
    demo = load_config("configs/demo_cpu.yaml", ["train.alpha=1", "train.eta=0"])
    assert demo.train.alpha == 1.0 and demo.train.eta == 0.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown key.*lrr"),
        ("trian.lr=1", "unknown key.*trian"),
        ("train.epochs=2.5", "epochs: expected int"),
        ("train.train_head=yes please", "train_head: expected bool"),
        ("train.method=sgd", "method='sgd'"),
        ("no_equals_sign", "expected key=value"),
    ],
)
def test_bad_overrides_are_config_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: train: unknown key\(s\) epoch"):
        load_config(path)


def test_config_accepts_a_number_or_checkpoint_and_refuses_the_rest():
    assert load_config(overrides=["train.logit_scale=100"]).train.logit_scale == 100.0
    assert load_config(overrides=["train.logit_scale=checkpoint"]).train.logit_scale == "checkpoint"
    assert load_config("paper_vitb16").train.logit_scale == 100.0  # the paper's recipe states it
    for bad in ("auto", "-1", "0"):
        with pytest.raises(ConfigError, match="logit_scale"):
            load_config(overrides=[f"train.logit_scale={bad}"])


def test_gate_and_selection_metrics_are_checked_against_what_the_protocol_reports():
    assert load_config("default", ["splits.protocol=fewshot", "gate.metric=balanced_accuracy"]).gate.metric == (
        "balanced_accuracy"
    )
    with pytest.raises(ConfigError, match="metric=balanced_accuracy needs splits.protocol=fewshot"):
        load_config("default", ["splits.protocol=base2new", "gate.metric=balanced_accuracy"])
    with pytest.raises(ConfigError, match="selection: metric must be 'top1' or 'balanced_accuracy'"):
        load_config("default", ["selection.metric=hm"])
