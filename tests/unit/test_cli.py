"""One convention for the command line: every usage line names its command, every flag says what it does, and
`clipcite` alone prints the commands (each with a line saying what it does) and exits 2.

The parsers are built inside each command's ``main``; the test catches each one as it parses (no command runs)."""

from __future__ import annotations

import argparse
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
