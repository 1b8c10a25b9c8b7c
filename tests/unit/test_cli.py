"""One convention for the command line: every usage line names its command, every flag says what it does, and
`clipcite` alone prints the commands (each with a line saying what it does) and exits 2.

The parsers are built inside each command's ``main``; the test catches each one as it parses (no command runs)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from clipcite import cli
from clipcite.pipeline import cli as pipeline_cli
from clipcite.tracking import champion_env

ROOT = Path(__file__).resolve().parents[2]


class Caught(Exception):
    pass


def parser_of(main, argv: list[str]) -> argparse.ArgumentParser:
    """The parser ``main(argv)`` builds, caught at ``parse_args`` before anything runs."""
    caught = []

    def catch(self, *args, **kwargs):
        caught.append(self)
        raise Caught

    with mock.patch.object(argparse.ArgumentParser, "parse_args", catch), pytest.raises(Caught):
        main(argv)
    return caught[0]


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    return [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction) and not action.help
    ]


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_clipcite_command_names_itself_and_documents_every_flag(command):
    parser = parser_of(cli.main, [command])
    assert parser.prog == f"clipcite {command}", parser.prog
    assert parser.format_usage().startswith(f"usage: clipcite {command} ")
    assert parser.description, f"clipcite {command} has no description"
    assert undocumented(parser) == [], f"clipcite {command}: flags without help"


def test_pipeline_py_and_serving_document_every_flag():
    top = parser_of(pipeline_cli.main, ["run"])
    assert top.prog == "pipeline.py" and top.description.rstrip().endswith("."), top.description
    (subparsers,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(subparsers.choices) == {"run", "compile", "submit", "schedule"}
    for name, sub in subparsers.choices.items():
        assert sub.format_usage().startswith(f"usage: pipeline.py {name} "), sub.format_usage()
        assert undocumented(sub) == [], f"pipeline.py {name}: flags without help"
    assert undocumented(parser_of(champion_env.main, [])) == []


def test_clipcite_help_lists_each_command_with_a_line_and_a_bare_clipcite_exits_2(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in cli.COMMANDS:
        (line,) = [line for line in out.splitlines() if line.strip().startswith(f"{command} ")]
        assert len(line.split(None, 1)[1]) > 10, line  # a description, not just the name
    assert cli.main([]) == 2
    bare = capsys.readouterr()
    assert "usage: clipcite" in bare.err and "champion" in bare.err


def test_champion_without_a_store_says_where_it_looked_and_which_flag_to_use(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["champion", "pets"]) == 2
    err = capsys.readouterr().err
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in err and "--tracking-uri" in err
    assert len(err.strip().splitlines()) == 1  # one line, printed once
    assert not (tmp_path / "mlflow.db").exists()  # looking did not create an empty store


def test_champion_of_an_unknown_model_is_an_error_naming_what_is_there(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri, registry_uri=uri).create_registered_model("clipcite")  # the store `pipeline.py run` writes
    assert cli.main(["champion", "pets"]) == 2
    err = capsys.readouterr().err
    assert "no registered model 'pets'" in err and "registered there: clipcite" in err and "--tracking-uri" in err


def test_cli_help_and_errors_answer_in_one_line(capsys):
    assert cli.main(["--help"]) == 0
    assert "champion" in capsys.readouterr().out
    assert cli.main(["chmpion"]) == 2
    assert capsys.readouterr().err.strip().endswith("clipcite: error: unknown command 'chmpion'")


def test_clipcite_help_does_not_load_mlflow_or_kfp():
    code = (
        "import sys; from clipcite import cli; cli.main(['--help']); print(sorted({'mlflow', 'kfp'} & {*sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().endswith("[]"), out.stdout


def test_unknown_command_prints_the_commands_and_exits_2(capsys):
    assert cli.main(["train"]) == 2
    captured = capsys.readouterr()
    assert "usage: clipcite COMMAND" in captured.err and "  sample-splits  sample the few-shot" in captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ingest", "imagefolder", "--out", "t"], "--root is required"),
        (["ingest", "coop", "--root", "data", "--out", "t"], "coop needs --dataset"),
    ],
)
def test_ingest_without_a_required_option_exits_2_naming_it(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_ingest_coop_writes_the_table_and_prints_the_counts(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "oxford_pets"
    split = {"train": [["a_1.jpg", 0, "abyssinian"]], "val": [], "test": [["b_1.jpg", 1, "beagle"]]}
    (folder / "images").mkdir(parents=True)
    (folder / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    for name, colour in (("a_1.jpg", (200, 0, 0)), ("b_1.jpg", (0, 0, 200))):
        Image.new("RGB", (8, 8), colour).save(folder / "images" / name)
    code = cli.main(
        ["ingest", "coop", "--root", str(tmp_path), "--dataset", "OxfordPets", "--out", str(tmp_path / "t")]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2
    from clipcite.data.table import read_classes, read_table

    rows = sorted(
        (r["id"], r["label"], r["split"])
        for r in read_table(str(tmp_path / "t"), columns=["id", "label", "split"]).to_pylist()
    )
    assert rows == [("oxford_pets/a_1.jpg", 0, "train"), ("oxford_pets/b_1.jpg", 1, "test")]
    assert read_classes(str(tmp_path / "t")).names == ("abyssinian", "beagle")
