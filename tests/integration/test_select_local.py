"""Several methods in one DAG, through kfp.local on tiny data: each candidate trained and scored on validation,
select's choice evaluated and registered; what the MLflow store and the model card then hold."""

import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[2]

from clipcite.evaluation.selection import Candidate, pick  # noqa: E402
from clipcite.pipeline import cli  # noqa: E402
from clipcite.records import Selection  # noqa: E402
from clipcite.steps import select, validate  # noqa: E402
from clipcite.steps.artifact_io import read_config  # noqa: E402
from clipcite.toyworld.generate import write_world  # noqa: E402

pytestmark = pytest.mark.slow  # see pyproject.toml: `make test-fast` leaves these out

METHODS = ("cite", "lora", "linear_probe")
# tiny and fast: one epoch of crops for every method (LoRA's 500 x K iterations would be 1000 steps here)
FAST = {"train.epochs": 1, "eval.batch_size": 64, "train.lora.iters_per_shot": 0}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("select")
    world = out / "table"
    write_world(str(world), seed=1, counts={"train": 3, "val": 1, "test": 2}, domains=("photo", "sketch"))
    uri = f"sqlite:///{out / 'mlflow.db'}"
    params = {"data_uri": str(world), "shots": 2, "overrides": FAST, "tracking_uri": uri}
    return cli.run_local(params, out / "run", methods=METHODS), uri, out


def _outputs(result: dict, step: str) -> Path:
    """A task's output folder of this run (kfp.local: <run root>/<task>/<output name>)."""
    return result["record"].parents[1] / step


def test_every_candidate_is_scored_and_the_rule_picks_from_validation(run):
    result, _, _ = run
    choice = json.loads((_outputs(result, "select") / "choice" / Selection.FILE).read_text())
    assert (_outputs(result, "select") / "choice" / "selection.png").is_file()
    rows = {row["method"]: row for row in choice["candidates"]}
    assert set(rows) == set(METHODS)
    for row in rows.values():
        assert row["val_images"] == 24 and row["seconds"] > 0 and row["trainable_parameters"] > 0
    assert rows["linear_probe"]["trainable_parameters"] < rows["lora"]["trainable_parameters"]
    assert rows["lora"]["trainable_parameters"] < rows["cite"]["trainable_parameters"]
    again = pick(
        [Candidate(**{k: v for k, v in row.items() if k not in ("selected", "test")}) for row in rows.values()]
    )
    assert choice["winner"] == again.method and rows[again.method]["selected"]
    registered = json.loads((result["record"] / "registration.json").read_text())
    assert registered["method"] == choice["winner"]  # the winner went on to evaluate and register
    assert registered["selection"]["winner"] == choice["winner"]
    # every candidate's test number is in the record, scored beside the winner after the choice
    tested = {row["method"]: row["test"] for row in registered["selection"]["candidates"]}
    assert set(tested) == set(METHODS) and all(isinstance(v, float) for v in tested.values())
    assert registered["selection"]["test_metric"].startswith("hm (mean of sketch")  # the gate's metric
    assert tested[choice["winner"]] == registered["mean"]["finetuned"]["hm"]
    for method in set(METHODS) - {choice["winner"]}:
        assert tested[method] == registered["mean"][f"candidate-{method}"]["hm"]


def test_selection_never_reads_test_labels(run, tmp_path):
    """The candidates rescored with every eval (test) set removed from the splits score and select exactly as in
    the run: validate reads val/ only, select reads validate's output only."""
    result, _, _ = run
    copy = tmp_path / "splits"
    shutil.copytree(_outputs(result, "sample-splits") / "splits", copy)
    shutil.rmtree(copy / "eval")
    config = read_config(str(_outputs(result, "sample-splits") / "run_config"))
    candidates = {}
    for index, method in enumerate(METHODS):
        task = "finetune" if index == 0 else f"finetune-{index + 1}"
        model = _outputs(result, task) / "model"
        scores = tmp_path / f"scores-{method}"
        body = validate.run(str(model), str(copy), str(scores), config)
        task = "validate" if index == 0 else f"validate-{index + 1}"
        assert body == Candidate.read(_outputs(result, task) / "scores")
        candidates[method] = (str(model), str(scores))
    choice = select.run(candidates, str(tmp_path / "model"), str(tmp_path / "choice"))
    assert choice == Selection.read(_outputs(result, "select") / "choice")


def test_the_tracking_store_and_the_model_card_hold_every_candidate(run):
    _, uri, _ = run
    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "clipcite"]
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {f"validate-{m}" for m in METHODS} | {f"finetune-{m}" for m in METHODS} | {"select"} <= set(children)
    for method in METHODS:
        metrics = children[f"validate-{method}"].data.metrics
        assert {"val_top1", "val_images", "trainable_parameters", "seconds", "artefact_bytes"} <= set(metrics)
        assert children[f"validate-{method}"].data.params["method"] == method
    winner = parent.data.tags["selection.winner"]
    assert winner in METHODS and "fewest trainable parameters" in parent.data.tags["selection.rule"]
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, select.SELECTION_TABLE)).read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert sorted(r["method"] for r in rows) == sorted(METHODS) and [r["method"] for r in rows if r["selected"]] == [
        winner
    ]
    assert {"val_top1", "trainable_parameters", "seconds", "artefact_bytes"} <= set(table["columns"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"model_card.md", Selection.FILE, select.SELECTION_TABLE} <= artifacts
    card = Path(client.download_artifacts(parent.info.run_id, "model_card.md")).read_text()
    assert "## Selection among candidates" in card and f"**{winner}** (selected)" in card
    for method in METHODS:
        assert f"| {method} |" in card or f"| **{method}** (selected) |" in card
    assert "| test hm (mean of sketch) |" in card
    images = [a.path for a in client.list_artifacts(parent.info.run_id, "images")]
    assert any(path.startswith("images/selection-test") for path in images), images  # validation beside test
    for method in METHODS:  # MLflow's comparison of the validate-<m> runs: validation beside test
        assert "test_hm" in children[f"validate-{method}"].data.metrics
    version = client.get_model_version("clipcite", parent.data.tags["registered_version"])
    assert version.tags["method"] == winner
