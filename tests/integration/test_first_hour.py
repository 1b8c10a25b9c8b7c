"""What a new user's first mistakes get back: a misspelt --param, a wrong preset or override, a failing step, and
`clipcite champion` without a store or with a wrong name each end in one line that names the problem and the fix,
before anything expensive runs."""

import io
import json
import subprocess
import sys
import warnings
from pathlib import Path
from unittest import mock

import pytest

from clipcite.cli import main as clipcite
from clipcite.pipeline import (
    cli,
    local_run,
)

ROOT = Path(__file__).resolve().parents[2]
CYAN, GREEN, RED, RESET = "\x1b[96m", "\x1b[92m", "\x1b[91m", "\x1b[0m"


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("shot=8", "no parameter 'shot'; did you mean 'shots'?"),
        ("shots=eight", "shots takes an integer"),
        ("eval_data_uris=s3://b/t", "eval_data_uris takes a JSON list"),
        ("config=nope", "nope: config file not found, and not a preset name (default, demo_cpu, paper_vitb16)"),
        ('overrides={"train.epoch": 5}', "train: unknown key(s) epoch"),
        ("method=foo", "method='foo'"),
        ("shots", "expected key=value"),
    ],
)
def test_a_wrong_param_fails_before_kfp_starts(param, message, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--tracking-uri", "off", "--param", f"data_uri={tmp_path}", "--param", param]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pipeline.py run: error: ") and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()  # no toy world, no pipeline root, no log: nothing ran


def test_submit_checks_its_params_before_talking_to_the_server(tmp_path, capsys):
    with mock.patch("kfp.Client", autospec=True) as client:
        common = ["submit", "--host", "http://127.0.0.1:9", "--workdir", str(tmp_path)]
        assert cli.main([*common, "--param", "data_uri=s3://b/t", "--param", "seeds=2"]) == 2
        assert cli.main([*common, "--param", "shots=4"]) == 2
    client.assert_not_called()
    err = capsys.readouterr().err
    assert "did you mean 'seed'?" in err and "--param data_uri=s3://" in err


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_an_unreachable_kfp_server_is_one_line_naming_the_url(command, tmp_path, capsys):
    argv = [command, "--host", "http://127.0.0.1:9", "--workdir", str(tmp_path), "--param", "data_uri=s3://b/t"]
    with warnings.catch_warnings(record=True) as caught:  # loopback port 9 (discard): nothing listens
        warnings.simplefilter("always")
        code = cli.main([*argv, *(["--cron", "0 0 3 * * 1"] if command == "schedule" else [])])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pipeline.py {command}: error: cannot reach Kubeflow Pipelines at http://127.0.0.1:9: ")
    assert "Connection refused" in err and len(err.splitlines()) == 1, err
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]


def test_a_five_field_cron_is_refused_with_its_six_field_form(tmp_path, capsys):
    with mock.patch("kfp.Client", autospec=True) as client, pytest.raises(SystemExit) as exit_:
        cli.main(["schedule", "--host", "http://127.0.0.1:9", "--cron", "0 3 * * 1"])
    assert exit_.value.code == 2
    client.assert_not_called()
    err = capsys.readouterr().err
    assert "KFP takes 6, seconds first" in err and "--cron '0 0 3 * * 1'" in err
    assert cli.cron_expression("@every 6h") == "@every 6h"


def kfp_output(task: str, body: list[str], status: str) -> str:
    """What kfp.local prints for one task (its format as of kfp 2.17, colours included)."""
    lines = [f"05:01:35.001 - INFO - Executing task {CYAN}'{task}'{RESET}", "05:01:35.002 - INFO - Streamed logs:", ""]
    lines += [f"    {line}" for line in body]
    colour = GREEN if status == "SUCCESS" else RED
    lines.append(f"05:01:54.100 - INFO - Task {CYAN}'{task}'{RESET} finished with status {colour}{status}{RESET}")
    return "\n".join(lines) + "\n"


def test_the_quiet_log_keeps_everything_prints_a_line_per_task_and_names_the_failure(tmp_path):
    terminal = io.StringIO()
    task_log = local_run.TaskLog(tmp_path / "run.log", terminal, echo=False)
    task_log.write(kfp_output("snapshot", ["[KFP Executor] Looking for component `snapshot`"], "SUCCESS"))
    task_log.write("05:01:55.000 - INFO - Task sample-splits cache hit (key=abc123); skipping execution.\n")
    traceback = [
        "Traceback (most recent call last):",
        '  File "/work/main/clipcite/models.py", line 80, in resolve_checkpoint',
        "    raise FileNotFoundError(f'{path}: checkpoint file not found')",
        "FileNotFoundError: /tmp/w.safetensors: checkpoint file not found (model.pretrained='/tmp/w.safetensors')",
    ]
    for chunk in kfp_output("cache-teacher", traceback, "FAILURE").split("\n"):  # written in pieces, as printed
        task_log.write(chunk + "\n")
    task_log.close()
    progress = terminal.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in progress] == [
        "snapshot ...",
        "snapshot: done",
        "sample-splits: reused from the cache",
        "cache-teacher ...",
        "cache-teacher: failed",
    ]
    assert "Looking for component" in (tmp_path / "run.log").read_text()  # the whole log is kept
    error = RuntimeError(f"Pipeline 'clipcite' finished with status FAILURE. Inner task failed: {CYAN}'cache-teacher'")
    assert task_log.failure(error) == (
        "task 'cache-teacher' failed: FileNotFoundError: /tmp/w.safetensors: checkpoint file not found "
        "(model.pretrained='/tmp/w.safetensors')"
    )


def test_the_quiet_log_names_the_domain_of_each_evaluate_task(tmp_path):
    """The ParallelFor's iterations are all called 'evaluate' and run at once; each line says its domain."""
    terminal = io.StringIO()
    task_log = local_run.TaskLog(tmp_path / "run.log", terminal, echo=False)
    start = "05:01:35.001 - INFO - Executing task {c}'evaluate'{r}\n05:01:35.002 - INFO - Streamed logs:\n\n"
    task_log.write(start.format(c=CYAN, r=RESET) * 2)  # both iterations start before either prints its input
    for domain in ("sketch", "photo"):
        task_log.write(f'            "parameterValues": {{\n                "domain": "{domain}",\n')
    for domain in ("photo", "sketch"):
        task_log.write(
            f"05:01:54.100 - INFO - Task {CYAN}'evaluate'{RESET} finished with status {GREEN}SUCCESS{RESET}\n"
        )
        task_log.write(
            f"    report: Artifact( name='report',\n                      metadata={{'domain': '{domain}'}} )\n"
        )
    task_log.close()
    assert [line.split("] ", 1)[1] for line in terminal.getvalue().splitlines()] == [
        "evaluate sketch ...",
        "evaluate photo ...",
        "evaluate photo: done",
        "evaluate sketch: done",
    ]


def test_overlapping_parallel_tasks_do_not_leave_print_indented_after_the_run(tmp_path, capsys):
    """kfp.local swaps ``builtins.print`` for an indenting one while a task runs; two evaluate iterations that overlap
    (start A, start B, end A, end B) leave B's "original", A's indenting print, in place. CI printed the summary
    with four spaces before it that way; ``captured`` puts the plain print back."""
    from kfp.local import logging_utils

    with local_run.captured(tmp_path / "run.log", echo=False):
        first, second = logging_utils.indented_print(), logging_utils.indented_print()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        second.__exit__(None, None, None)
    print("# clipcite: the summary")
    assert capsys.readouterr().out == "# clipcite: the summary\n"


def test_champion_without_a_store_says_where_it_looked_and_which_flag_to_use(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert clipcite(["champion", "pets"]) == 2
    err = capsys.readouterr().err
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in err and "--tracking-uri" in err
    assert len(err.strip().splitlines()) == 1  # one line, printed once
    assert not (tmp_path / "mlflow.db").exists()  # looking did not create an empty store


def test_snapshot_tracks_where_champion_and_pipeline_run_do(tmp_path, monkeypatch, capsys):
    from clipcite.toyworld.generate import write_world

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_world("table", counts={"train": 1, "val": 1, "test": 1}, domains=("photo",))
    assert clipcite(["snapshot", "--data", "table"]) == 0, capsys.readouterr().err  # as the README shows it
    assert (tmp_path / "mlflow.db").is_file()
    assert json.loads(capsys.readouterr().out)["mlflow_run_id"]


def test_one_default_tracking_store_and_errors_that_name_the_flag(tmp_path, monkeypatch):
    from clipcite.tracking import default_uri, runs

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_uri.default_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert default_uri.default_tracking_uri() == "http://127.0.0.1:9"
    assert default_uri.default_tracking_uri("off") == "off"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(runs.TrackingError, match="pipeline parameter tracking_uri"):
        runs.resolve_uri("")  # a pipeline step
    with default_uri.named_by_flag(), pytest.raises(runs.TrackingError) as raised:
        runs.resolve_uri("")  # a command
    assert "--tracking-uri" in str(raised.value) and "pipeline parameter" not in str(raised.value)
    # one definition, used by every command that takes --tracking-uri
    for path in (ROOT / "clipcite").rglob("*.py"):
        text = path.read_text()
        assert path.name == "default_uri.py" or "def default_tracking_uri" not in text, path
        if '"--tracking-uri"' in text and path.name != "default_uri.py":
            assert "default_tracking_uri" in text, f"{path} takes --tracking-uri without the shared default"


def test_champion_of_an_unknown_model_is_an_error_naming_what_is_there(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri, registry_uri=uri).create_registered_model("clipcite")  # the store `pipeline.py run` writes
    assert clipcite(["champion", "pets"]) == 2
    err = capsys.readouterr().err
    assert "no registered model 'pets'" in err and "registered there: clipcite" in err and "--tracking-uri" in err


def test_cli_help_and_errors_answer_in_one_line(capsys):
    assert clipcite(["--help"]) == 0
    assert "champion" in capsys.readouterr().out
    assert clipcite(["chmpion"]) == 2
    assert capsys.readouterr().err.strip().endswith("clipcite: error: unknown command 'chmpion'")


def test_clipcite_help_does_not_load_mlflow_or_kfp():
    code = (
        "import sys; from clipcite import cli; cli.main(['--help']); print(sorted({'mlflow', 'kfp'} & {*sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().endswith("[]"), out.stdout


def test_a_missing_table_an_early_evaluate_and_a_wrong_domain_say_what_to_do(table, tmp_path, capsys):
    missing = tmp_path / "no-such-table"
    assert clipcite(["sample-splits", "--table", str(missing), "--out", str(tmp_path / "s")]) != 0
    assert f"{missing}: does not exist" in capsys.readouterr().err

    splits = tmp_path / "splits"
    tiny = ["--set", "model.arch=clipcite-tiny", "--set", "model.pretrained=", "--set", "splits.shots=2"]
    assert clipcite(["sample-splits", "--table", str(table), "--out", str(splits), *tiny]) == 0
    assert clipcite(["evaluate", "--model", str(tmp_path / "model"), "--splits", str(splits), "--out", "x", *tiny])
    assert "run `clipcite finetune --out" in capsys.readouterr().err

    wrong = ["--set", "splits.train_domains=[painting]"]
    assert clipcite(["sample-splits", "--table", str(table), "--out", str(tmp_path / "s2"), *tiny, *wrong])
    err = capsys.readouterr().err
    assert "in domains ['painting']" in err and "domains ['photo', 'sketch']" in err
    assert "--set splits.train_domains=[...]" in err


def test_the_toy_world_line_is_a_plain_line_of_the_default_output(tmp_path, monkeypatch, capsys, caplog):
    """``pipeline.py run`` without data writes the toy world first: one plain line says so (it takes seconds), not a
    timestamped INFO record on stderr."""
    from clipcite.toyworld import generate

    written = []
    monkeypatch.setattr(generate, "write_world", lambda uri, seed: written.append(uri))
    monkeypatch.setattr(local_run, "run_dag", lambda *args, **kwargs: {})
    with caplog.at_level("INFO"):
        cli.run_local({"tracking_uri": "off"}, tmp_path, quiet=True)
    captured = capsys.readouterr()
    assert written == [str(tmp_path / "data" / "toyworld")]
    assert captured.out == f"toy world: generating {tmp_path / 'data' / 'toyworld'} (first run only)\n"
    assert captured.err == "" and not [r for r in caplog.records if r.name == "pipeline"]
