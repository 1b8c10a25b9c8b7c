"""A user's own folder of images with classes of unequal size (one normal class, two defects, 2 : 1 : 1), no source
file, several methods: what the summary, the card, metrics.json and MLflow say about the winner and how it does."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from clipcite.pipeline import cli, local_run
from clipcite.records import EvalReport, Registration
from tests.support.image_folders import drop_images

pytestmark = pytest.mark.slow  # one several-method DAG (about a minute): `make test-fast` leaves it out

SIZES = {"red circle": 16, "blue square": 8, "green triangle": 8}  # test images per class: 2 : 1 : 1
METHODS = ("cite", "linear_probe")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    data = root / "inspection"
    for name, count in SIZES.items():
        drop_images(data, name, "train", 0, 6)
        drop_images(data, name, "test", 100, count)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    overrides = {"splits.protocol": "fewshot", "splits.train_domains": [], "train.epochs": 1}
    overrides |= {"gate.metric": "balanced_accuracy", "selection.metric": "balanced_accuracy"}
    params = {"data_uri": str(data), "shots": 2, "overrides": overrides, "tracking_uri": uri}
    params["registered_model_name"] = "inspection"
    terminal = io.StringIO()  # the quiet run's line per task goes to the terminal: here
    with contextlib.redirect_stdout(terminal):
        result = cli.run_local(params, root / "run", methods=METHODS, quiet=True)
    return result, uri, terminal.getvalue()


def test_the_summary_names_the_winner_the_folder_and_balanced_accuracy(run, capsys):
    result, uri, _ = run
    capsys.readouterr()
    local_run.print_summary(result, uri)
    printed = capsys.readouterr().out.splitlines()
    registration: Registration = result["registration"]
    winner = registration.selection.winner
    assert registration.method == winner and result["metrics"].method == winner
    assert printed[0].startswith(f"# clipcite: {winner} (alpha=")
    assert "| domain | model | Top-1 | Balanced |" in printed
    assert any(line.startswith(f"selected {winner} on validation (balanced accuracy ") for line in printed)
    assert "baselines on default: always 'red circle' top-1 50.00, balanced 33.33; zero-shot top-1 " in "\n".join(
        printed
    )
    assert any(
        line.startswith("note: default's classes differ in size up to 2.0x (8 to 16 images)") for line in printed
    )


def test_metrics_json_and_mlflow_hold_balanced_accuracy_and_per_class_recall(run):
    result, uri, _ = run
    metrics: EvalReport = result["metrics"]
    entry = metrics.sets["default"]["finetuned"]
    assert set(entry["per_class"]) == set(SIZES) and entry["support"] == SIZES
    recalls = list(entry["per_class"].values())
    assert entry["balanced_accuracy"] == pytest.approx(sum(recalls) / len(recalls))
    assert metrics.mean["finetuned"]["balanced_accuracy"] == pytest.approx(entry["balanced_accuracy"])
    body = json.loads((result["record"] / EvalReport.FILE).read_text())
    assert body["mean"]["finetuned"]["balanced_accuracy"] == metrics.mean["finetuned"]["balanced_accuracy"]
    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "clipcite"]
    parent = next(r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.metrics["mean/finetuned/balanced_accuracy"] == round(entry["balanced_accuracy"], 2)


def test_the_card_names_the_winner_and_the_folder_with_its_settings_recall_and_baselines(run):
    result, uri, _ = run
    registration: Registration = result["registration"]
    winner = registration.selection.winner
    version = MlflowClient(uri, registry_uri=uri).get_model_version("inspection", str(registration.registry.version))
    card = version.description
    assert f"# inspection v{registration.registry.version}: {winner} on inspection" in card
    assert "| dataset | inspection |" in card and " ? |" not in card.split("## Data")[1].split("##")[0]
    method = card.split("## Method\n", 1)[1].split("\n## ", 1)[0]
    if winner == "linear_probe":
        assert "anchor penalty" in method and "lambda" not in method and "eta (weight" not in method
    else:
        assert "lambda (weight of L_SCL)" in method and "anchor penalty" not in method
    assert "Recall per class on default:" in card and "| red circle | 16 |" in card
    assert "- baselines on default: always 'red circle' top-1 50.00, balanced 33.33" in card
    assert "- note: default's classes differ in size up to 2.0x" in card


def test_the_gate_promotes_by_balanced_accuracy(run):
    result, _, _ = run
    registry = result["registration"].registry
    assert registry.gate["metric"] == "balanced_accuracy" and registry.decision == "champion"
    assert registry.gate["candidate"] == pytest.approx(result["metrics"].mean["finetuned"]["balanced_accuracy"])


def test_each_candidates_task_line_names_its_method(run):
    result, _, terminal = run
    lines = [line.split("] ", 1)[1] for line in terminal.splitlines() if line.startswith("[")]
    for method in METHODS:
        assert f"finetune-{method}: done" in lines and f"validate-{method}: done" in lines, lines
    assert not any(line.startswith(("finetune-2", "validate-2")) for line in lines), lines
    assert "finetune-2" in Path(result["log"]).read_text()  # kfp.local's own name stays in its log
