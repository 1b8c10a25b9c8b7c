"""finetune's input checks (clipcite/steps/finetune.py), through ``clipcite finetune``."""

from clipcite.cli import main

TINY = ["--config", "configs/demo_cpu.yaml", "--set", "train.epochs=2"]


def test_a_missing_splits_folder_is_reported_as_missing(tmp_path, capsys):
    argv = ["finetune", *TINY, "--splits", str(tmp_path / "nope"), "--out", str(tmp_path / "m")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nope'}: no such folder" in err and "no Parquet shards" not in err, err
