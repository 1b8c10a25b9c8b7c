"""The CLI chain on CPU (ingest -> sample-splits -> cache-teacher -> finetune -> evaluate) and its clear errors."""

import json

import pytest

from clipcite.cli import main
from clipcite.steps import cache_teacher
from clipcite.steps.artifact_io import read_config

TINY = ["--config", "configs/demo_cpu.yaml", "--set", "train.epochs=2"]


@pytest.fixture(scope="module")
def chain(imagefolder, tmp_path_factory):
    out = tmp_path_factory.mktemp("chain")
    assert (
        main(
            [
                "ingest",
                "imagefolder",
                "--root",
                str(imagefolder),
                "--layout",
                "split/domain/class",
                "--dataset",
                "demo",
                "--out",
                str(out / "table"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "sample-splits",
                *TINY,
                "--set",
                "splits.shots=4",
                "--table",
                str(out / "table"),
                "--out",
                str(out / "splits"),
                "--config-out",
                str(out / "run_config.yaml"),
            ]
        )
        == 0
    )
    assert main(["cache-teacher", *TINY, "--splits", str(out / "splits"), "--out", str(out / "teacher")]) == 0
    assert (
        main(
            [
                "finetune",
                *TINY,
                "--splits",
                str(out / "splits"),
                "--cache",
                str(out / "teacher"),
                "--out",
                str(out / "model"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                *TINY,
                "--model",
                str(out / "model"),
                "--splits",
                str(out / "splits"),
                "--out",
                str(out / "eval"),
            ]
        )
        == 0
    )
    return out


def test_chain_produces_every_artifact(chain):
    manifest = json.loads((chain / "splits" / "manifest.json").read_text())
    assert manifest["sets"]["train"]["rows"] == 3 * 4 and manifest["shots"] == 4
    assert [s["name"] for s in manifest["eval_sets"]] == ["photo-base", "photo-new", "sketch-base", "sketch-new"]
    assert {p.name for p in (chain / "teacher").iterdir()} == {"teacher.safetensors", "teacher.json"}
    model_files = {p.name for p in (chain / "model").iterdir()}
    assert {
        "open_clip_model.safetensors",
        "open_clip_config.json",
        "clipcite.json",
        "curves.jsonl",
        "train_summary.json",
    } <= model_files
    curves = [json.loads(line) for line in (chain / "model" / "curves.jsonl").read_text().splitlines()]
    assert len(curves) == 2 and {"dva", "scl", "vld", "total", "lr"} <= set(curves[0])  # 12 images, batch 16
    assert not (chain / "model.checkpoints").exists()  # removed once the model is published
    metrics = json.loads((chain / "eval" / "metrics.json").read_text())
    for domain in ("photo", "sketch"):
        for model in ("zeroshot", "finetuned"):
            entry = metrics["domains"][domain][model]
            assert {"base", "new", "hm"} <= set(entry)
            base, new = entry["base"], entry["new"]
            assert entry["hm"] == pytest.approx(2 * base * new / (base + new) if base + new else 0.0, abs=1e-9)
            assert base == metrics["sets"][f"{domain}-base"][model]["top1"]
            assert new == metrics["sets"][f"{domain}-new"][model]["top1"]
    per_class = metrics["sets"]["photo-base"]["finetuned"]["per_class"]
    assert len(per_class) == 3
    eval_files = {p.name for p in (chain / "eval").iterdir()}
    assert {"metrics.json", "report.md", "domains.png", "confusion", "confusion_photo-base.png"} <= eval_files
    confusion = json.loads((chain / "eval" / "confusion" / "photo-new.json").read_text())
    assert sum(map(sum, confusion["finetuned"])) == metrics["sets"]["photo-new"]["finetuned"]["n"]
    assert "| photo | finetuned |" in (chain / "eval" / "report.md").read_text()


def test_snapshot_and_register_are_commands_like_the_other_steps(chain, capsys, caplog):
    argv = ["--data", str(chain / "table"), "--tracking-uri", "off", "--config", str(chain / "run_config.yaml")]
    assert main(["snapshot", *argv]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(printed["digest"]) == 64 and printed["mlflow_run_id"] == ""
    assert printed["model_identity"] == "random:clipcite-tiny:0"
    argv = ["--model", str(chain / "model"), "--report", str(chain / "eval"), "--out", str(chain / "registered")]
    argv += ["--summary", str(chain / "summary.md")]
    assert main(["register", *argv, "--config", str(chain / "run_config.yaml")]) == 0
    assert (chain / "registered").is_dir() and "finetuned" in (chain / "summary.md").read_text()
    # without --config the gate's rules are those the model was trained with; tracking needs snapshot's run
    with caplog.at_level("INFO"):
        assert main(["register", *argv]) == 0
    assert "nothing registered in MLflow" in caplog.text and "pass --mlflow-run-id" in caplog.text
    with pytest.raises(SystemExit) as exited:
        main(["register", *argv, "--tracking-uri", "sqlite:///unused.db"])
    assert exited.value.code == 2
    assert "registering with --tracking-uri needs --mlflow-run-id" in capsys.readouterr().err


def test_too_few_shots_fails_clearly_and_writes_nothing(chain, tmp_path, capsys):
    out = tmp_path / "splits"
    code = main(
        ["sample-splits", *TINY, "--set", "splits.shots=50", "--table", str(chain / "table"), "--out", str(out)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "has 12 'train' image(s), fewer than shots=50" in err
    assert "--set splits.allow_fewer=true" in err and """--param 'overrides={"splits.allow_fewer": true}'""" in err
    assert not out.exists()


def test_cache_from_another_model_is_refused(chain, tmp_path, capsys):
    code = main(
        [
            "finetune",
            *TINY,
            "--set",
            "model.init_seed=5",
            "--splits",
            str(chain / "splits"),
            "--cache",
            str(chain / "teacher"),
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "teacher cache" in err and "made with model 'random:clipcite-tiny:0'" in err
    assert not (tmp_path / "m").exists()


def test_unknown_config_key_is_an_error(chain, tmp_path, capsys):
    code = main(
        [
            "finetune",
            *TINY,
            "--set",
            "train.learning_rate=1",
            "--splits",
            str(chain / "splits"),
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert code == 2 and "unknown key(s) learning_rate" in capsys.readouterr().err


def test_sample_splits_prints_a_short_summary_the_manifest_keeps_the_rest(chain, tmp_path, capsys):
    out = tmp_path / "splits"
    assert (
        main(["sample-splits", *TINY, "--set", "splits.shots=4", "--table", str(chain / "table"), "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "sha256" not in printed[0], printed
    assert printed[0].startswith("base2new, 4 shots, seed 1: train 12, ") and "manifest.json" in printed[0]
    assert "ids_sha256" in (out / "manifest.json").read_text()


def test_corrupt_image_in_a_split_names_the_table_and_row(chain, tmp_path, capsys):
    import shutil

    import pyarrow.parquet as pq

    splits = tmp_path / "splits"
    shutil.copytree(chain / "splits", splits)
    shard = splits / "train" / "part-00000.parquet"
    table = pq.read_table(shard).to_pylist()
    table[0]["image"] = b"garbage"
    import pyarrow as pa

    from clipcite.data.table import SCHEMA

    pq.write_table(pa.Table.from_pylist(table, schema=SCHEMA), shard)
    code = main(
        ["finetune", *TINY, "--splits", str(splits), "--set", "teacher.mode=online", "--out", str(tmp_path / "m")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"{splits / 'train'}: row id={table[0]['id']!r}: corrupt or unreadable image" in err


def test_cache_teacher_refuses_weights_other_than_the_snapshot_saw(chain, tmp_path):
    config = read_config(str(chain / "run_config.yaml"))  # sample-splits' --config-out: the resolved config
    with pytest.raises(ValueError, match="snapshot saw sha256:old, cache-teacher loaded random:clipcite-tiny:0"):
        cache_teacher.run(str(chain / "splits"), str(tmp_path / "t"), config, expected_identity="sha256:old")
    assert not (tmp_path / "t").exists()
