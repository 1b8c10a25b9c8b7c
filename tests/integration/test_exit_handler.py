"""Failed runs are closed: a pipeline run that fails at finetune leaves its MLflow run FAILED, with the failed step
and its error named, through the exit handler in the local DAG. (close_pipeline_run itself is tested in
tests/unit/tracking/test_runs.py, finish_run after a local run in tests/unit/steps/test_finish_run.py.)"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[2]

from clipcite.pipeline import cli  # noqa: E402
from clipcite.toyworld.generate import write_world  # noqa: E402

pytestmark = pytest.mark.slow  # see pyproject.toml: `make test-fast` leaves these out


def _runs(uri: str) -> dict[str, object]:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("clipcite")
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "table"
    write_world(str(out), seed=1, counts={"train": 3, "val": 1, "test": 2}, domains=("photo",))
    return out


def test_pipeline_failing_at_finetune_leaves_its_mlflow_run_failed(world, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = {
        "data_uri": str(world),
        "shots": 2,
        "overrides": {"train.epochs": 2, "train.lr": 1e12},  # diverges at step 2: the non-finite guard stops it
        "tracking_uri": uri,
    }
    with pytest.raises(RuntimeError, match="task 'finetune' failed: NonFiniteError"):
        cli.run_local(params, tmp_path / "run", quiet=True)
    runs = _runs(uri)
    (parent,) = [r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags]  # named by its content
    assert parent.info.status == "FAILED"
    assert parent.data.tags["clipcite.failed_step"] == "finetune"
    assert parent.data.tags["clipcite.error"].startswith("NonFiniteError: ")
    assert "step 2 (epoch 1/2)" in parent.data.tags["clipcite.error"]
    assert runs["finetune"].info.status == "FAILED" and runs["snapshot"].info.status == "FINISHED"
    assert "register" not in runs


def test_a_several_method_run_failing_after_training_is_blamed_on_the_step_that_failed(world, tmp_path):
    """With several methods the step runs are finetune-<method> and validate-<method>: a failure after them (here
    register, on a gate domain the data lacks) names register, never the steps before training."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = {
        "data_uri": str(world),
        "shots": 2,
        "overrides": {"train.epochs": 1, "gate.domain": "nosuch"},
        "tracking_uri": uri,
    }
    with pytest.raises(RuntimeError, match="task 'register' failed"):
        cli.run_local(params, tmp_path / "run", methods=("cite", "linear_probe"), quiet=True)
    runs = _runs(uri)
    (parent,) = [r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags]
    assert {"finetune-cite", "finetune-linear_probe", "validate-cite", "validate-linear_probe", "select"} <= set(runs)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["clipcite.failed_step"] == "register"
    assert "gate.domain='nosuch' is not an eval domain" in parent.data.tags["clipcite.error"]
