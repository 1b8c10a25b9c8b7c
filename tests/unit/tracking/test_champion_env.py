"""champion.env (clipcite/tracking/champion_env.py), what the serving manifests read: one line per key, the committed
file overwritten only with --force and its header kept, and the store every command defaults to."""

import shutil
from pathlib import Path

import pytest

from clipcite.tracking import champion_env

ROOT = Path(__file__).resolve().parents[3]


RESOLVED = {
    "name": "clipcite",
    "alias": "champion",
    "version": "7",
    "artifact-uri": "mlflow-artifacts:/1/models/m-0123/artifacts",
}


def test_champion_env_is_one_line_per_key():
    assert champion_env.env_text(RESOLVED).splitlines() == [f"{k}={RESOLVED[k]}" for k in champion_env.KEYS]
    with pytest.raises(ValueError, match="'version' must be one non-empty line"):
        champion_env.env_text({**RESOLVED, "version": ""})


def _committed_env(tmp_path: Path) -> Path:
    """The committed champion.env in a git work tree of its own (as in a clone)."""
    import subprocess

    env = tmp_path / "champion.env"
    shutil.copy(ROOT / "manifests" / "serving" / "champion" / "champion.env", env)
    for command in (["init", "-q"], ["add", "champion.env"]):
        subprocess.run(["git", *command], cwd=tmp_path, check=True)
    return env


def test_resolving_into_the_committed_champion_env_takes_force_and_keeps_its_header(tmp_path, capsys, caplog):
    from unittest import mock

    env = _committed_env(tmp_path)
    before = env.read_text()
    resolved = {**RESOLVED, "artifact-uri": "file:///home/me/mlartifacts/1/models/m-1/artifacts"}
    argv = ["--tracking-uri", "http://127.0.0.1:9", "--out", str(env)]
    with (
        mock.patch.object(champion_env.runs, "connect"),
        mock.patch.object(champion_env, "resolve", return_value=resolved),
    ):
        assert champion_env.main(argv) == 2
        err = capsys.readouterr().err
        assert "is tracked by git" in err and "--force" in err and len(err.strip().splitlines()) == 1
        assert env.read_text() == before  # refused: nothing written
        with caplog.at_level("INFO"):
            assert champion_env.main([*argv, "--force"]) == 0
    header = [line for line in before.splitlines() if line.startswith("#")]
    assert env.read_text().splitlines() == [*header, *champion_env.env_text(resolved).splitlines()]
    assert "is a path on this machine" in caplog.text  # a file:// URI: pods elsewhere cannot read it


def test_serving_reads_the_store_every_command_defaults_to(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert champion_env.main(["--out", "-"]) == 2
    err = capsys.readouterr().err
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in err and "--tracking-uri" in err, err
    assert "pipeline parameter" not in err
