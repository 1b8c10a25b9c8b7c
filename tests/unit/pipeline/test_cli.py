"""``python pipeline.py run|submit|schedule`` (clipcite/pipeline/cli.py): a misspelt or ill-typed --param, an
unreachable Kubeflow Pipelines server and a five-field cron each end in one line that names the problem and the fix,
before anything expensive runs; a run without data says in one plain line that it writes the toy world."""

import warnings
from unittest import mock

import pytest

from clipcite.pipeline import cli, local_run


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
