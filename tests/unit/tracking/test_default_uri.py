"""One default tracking store for every command (clipcite/tracking/default_uri.py): ./mlflow.db unless
MLFLOW_TRACKING_URI names another, and an error without one that names the flag (a command) or the pipeline
parameter (a step)."""

import json
from pathlib import Path

import pytest

from clipcite.cli import main as clipcite

ROOT = Path(__file__).resolve().parents[3]


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
