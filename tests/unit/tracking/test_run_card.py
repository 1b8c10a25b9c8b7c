"""What the MLflow UI shows of a pipeline run, read from the tracking store it reads: the run's name and
Description, its Datasets and Registered models, metrics a person can read (a few rounded means, every domain in
one table) and a registry versions table whose first line is plain text.

The steps run in this process on the tiny random model and the demo table, against a local sqlite store, as the
pipeline chains them (snapshot -> sample-splits -> cache-teacher -> finetune -> evaluate per domain -> register)."""

import json
import re
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from clipcite.steps import cache_teacher, evaluate, finetune, register, sample_splits, snapshot
from clipcite.steps.artifact_io import read_config
from clipcite.tracking import run_card, runs

NAME = "ui-check"
PARAMS = {"shots": 2, "seed": 1, "arch": "", "pretrained": "", "method": ""}  # "" keeps demo_cpu's value
OVERRIDES = {"train.epochs": 1}


@pytest.fixture(scope="module")
def chain(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        common = {"preset": "demo_cpu", "overrides": OVERRIDES, **PARAMS}
        snap = snapshot.for_pipeline(
            str(table),
            (),
            tracking_uri=uri,
            experiment_name="ui",
            kfp_run_id="kfp-run-7",
            run_name="clipcite-2026-12-02-10-00-00-123456",
            run_uri=str(out / "mlflow_run"),
            **common,
        )
        splits, config_uri = str(out / "splits"), str(out / "run_config.yaml")
        sample_splits.for_pipeline(str(table), (), splits, config_uri, data_digest=snap.digest, **common)
        config = read_config(config_uri)
        cache_teacher.run(splits, str(out / "teacher"), config, expected_identity=snap.model_identity)
        run = {"tracking_uri": uri, "mlflow_run_id": snap.mlflow_run_id}
        finetune.run(splits, str(out / "model"), config, cache_uri=str(out / "teacher"), **run)
        reports = []
        for domain in ("photo", "sketch"):  # the ParallelFor's tasks
            reports.append(str(out / f"eval-{domain}"))
            evaluate.run(str(out / "model"), splits, reports[-1], config, (domain,), registered_model_name=NAME, **run)
        body = register.run(
            str(out / "model"), reports, str(out / "record"), str(out / "summary.md"), config,
            registered_model_name=NAME, **run,
        )  # fmt: skip
    client = MlflowClient(uri, registry_uri=uri)
    yield {"client": client, "run_id": snap.mlflow_run_id, "digest": snap.digest, "body": body, "table": table}


def _parent(chain):
    return chain["client"].get_run(chain["run_id"])


def _steps(chain) -> dict:
    client, parent = chain["client"], _parent(chain)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{chain['run_id']}'")
    return {c.info.run_name: c for c in children}


def test_the_run_is_named_by_method_model_and_data_first_and_each_step_by_its_step(chain):
    parent = _parent(chain)
    # not KFP's name (clipcite-<date>-...): the part that tells runs apart comes first, before the UI cuts it
    assert re.fullmatch(r"cite-clipcite-tiny-demo \d{4}-\d\d-\d\d \d\d:\d\d", parent.info.run_name), (
        parent.info.run_name
    )
    assert parent.data.tags["clipcite.kfp_run_name"] == "clipcite-2026-12-02-10-00-00-123456"
    assert set(_steps(chain)) == {"snapshot", "finetune", "evaluate-photo", "evaluate-sketch", "register"}


def test_the_description_says_what_ran_and_which_version_it_registered(chain):
    note = _parent(chain).data.tags["mlflow.note.content"]
    assert note.startswith("**cite** on **demo** from `clipcite-tiny` (2 shots, seed 1).")
    for expected in (
        f"| data | `{chain['table']}` |",
        f"| data digest | `{chain['digest']}` |",
        "| base model | `clipcite-tiny`, weights `(random init)` |",
        "| model identity | `random:clipcite-tiny:0` |",
        "| config | preset `demo_cpu` |",
        '| overrides | `{"train.epochs": 1}` |',
        "| KFP run | `kfp-run-7` (`clipcite-2026-12-02-10-00-00-123456`)",
    ):
        assert expected in note, (expected, note)
    assert note.rstrip().endswith(f"**Registered**: `{NAME}` v1, champion (no champion yet).")


def test_the_run_lists_its_datasets_and_its_registered_version_and_logged_model(chain):
    client, parent = chain["client"], _parent(chain)
    inputs = {
        (d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"]) for d in parent.inputs.dataset_inputs
    }
    assert inputs == {
        ("demo-train", "training"),
        ("demo-val", "validation"),
        *((f"{d}-{s}", "evaluation") for d in ("photo", "sketch") for s in ("base", "new")),
    }
    # The run page's Registered models: the versions whose run_id is this run (MLflow's GraphQL run resolver).
    versions = client.search_model_versions(f"run_id = '{chain['run_id']}'")
    assert [(v.name, str(v.version)) for v in versions] == [(NAME, "1")]
    assert [m.model_id for m in parent.outputs.model_outputs] == [versions[0].source.removeprefix("models:/")]


def test_the_run_holds_a_few_rounded_means_and_every_domain_in_one_table(chain):
    client, parent = chain["client"], _parent(chain)
    metrics = parent.data.metrics
    assert metrics and all(k.startswith("mean/") for k in metrics), sorted(metrics)  # one chart per metric
    assert {"mean/finetuned/hm", "mean/zeroshot/hm"} <= set(metrics) and len(metrics) <= 12
    assert all(v == round(v, 2) for v in metrics.values()), metrics
    assert metrics["mean/finetuned/hm"] == round(chain["body"].mean["finetuned"]["hm"], 2)
    table = json.loads(Path(client.download_artifacts(chain["run_id"], register.METRICS_TABLE)).read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert {(r["domain"], r["model"]) for r in rows} >= {("photo", "finetuned"), ("sketch", "zeroshot")}
    photo = next(r for r in rows if (r["domain"], r["model"]) == ("photo", "finetuned"))
    assert photo["hm"] == round(chain["body"].domains["photo"]["finetuned"]["hm"], 2)
    # each domain's own numbers stay on its evaluate run, under the names they always had
    step = _steps(chain)["evaluate-photo"].data.metrics
    assert {"eval/photo/finetuned/base", "eval/photo/finetuned/hm"} <= set(step) and not any(
        "sketch" in k for k in step
    )


def test_the_versions_table_shows_a_plain_summary_and_the_version_page_the_card(chain):
    client = chain["client"]
    version = client.get_model_version(NAME, "1")
    first, rest = version.description.split("\n", 1)
    hm = chain["body"].mean["finetuned"]["hm"]
    assert first == f"cite on demo: HM {hm:.2f}" and len(first) <= 32  # the table cuts at 32 characters
    assert not re.search(r"[#*`|\[]", first)
    assert f"# {NAME} v1: cite on demo" in rest and "## Per-domain accuracy" in rest  # the rendered card
    card = Path(client.download_artifacts(chain["run_id"], "model_card.md")).read_text()
    assert card == version.description
    assert runs.METRIC_DIGITS == 2


# The run card's pure functions on their own (what the chain above reads back from the store).

STARTED = 1796220210  # 2026-12-02 14:03:30 UTC


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_model_tag_adds_an_open_clip_weights_tag_and_nothing_for_a_path_or_random_init():
    assert run_card.model_tag("ViT-B-16", "openai") == "ViT-B-16:openai"
    assert run_card.model_tag("ViT-B-16", " laion2b_s34b_b88k ") == "ViT-B-16:laion2b_s34b_b88k"
    for pretrained in ("", "/w/ckpt.safetensors", "s3://b/w", "w.pt", "hf-hub:org/model"):
        assert run_card.model_tag("ViT-B-16", pretrained) == "ViT-B-16", pretrained


def test_the_run_name_puts_method_model_and_data_before_the_local_start_time(utc):
    name = run_card.run_name(method="cite", arch="ViT-B-16", pretrained="openai", data="pets", started=STARTED)
    assert name == "cite-ViT-B-16:openai-pets 2026-12-02 14:03"
    assert run_card.run_name(method="", arch="", pretrained="openai", data="pets", started=STARTED) == (
        "pets 2026-12-02 14:03"  # weights without an architecture say nothing
    )
    assert run_card.run_name(method="", arch="", pretrained="", data="", started=STARTED) == "clipcite 2026-12-02 14:03"


def test_the_description_is_a_sentence_then_a_row_for_each_known_part():
    text = run_card.run_description(
        data_name="pets",
        data_uri="s3://b/pets",
        eval_data_uris=["s3://b/sketch"],
        data_digest="sha256:d",
        model={"arch": "ViT-B-16", "pretrained": "openai", "identity": "openai:ViT-B-16"},
        method="cite",
        shots=16,
        seed=1,
        preset="paper_vitb16",
        overrides={"train.epochs": 2, "splits.shots": 16},
        kfp_run_id="run-7",
        kfp_run_name="nightly",
        code_version="0.1.0",
    )
    assert text.splitlines() == [
        "**cite** on **pets** from `ViT-B-16` (16 shots, seed 1).",
        "",
        "| | |",
        "|---|---|",
        "| data | `s3://b/pets`, eval `s3://b/sketch` |",
        "| data digest | `sha256:d` |",
        "| base model | `ViT-B-16`, weights `openai` |",
        "| model identity | `openai:ViT-B-16` |",
        "| method | cite |",
        "| config | preset `paper_vitb16` |",
        '| overrides | `{"splits.shots": 16, "train.epochs": 2}` |',
        "| KFP run | `run-7` (`nightly`): the KFP UI's Runs page |",
        "| code | clipcite `0.1.0` |",
        "",
        "Steps are the nested runs (`evaluate-<domain>` per eval domain); per-domain metrics: `metrics_table.json`.",
    ]
    bare = run_card.run_description(data_name="", data_uri="/data/t", eval_data_uris=[], data_digest="", model={})
    assert bare.splitlines()[:4] == ["A run on **/data/t**.", "", "| | |", "|---|---|"]
    assert bare.splitlines()[4] == "| data | `/data/t` |" and bare.splitlines()[5] == ""  # nothing else is known
    seed_zero = run_card.run_description(
        data_name="t", data_uri="t", eval_data_uris=[], data_digest="", model={"arch": "a"}, seed=0, kfp_run_id="r"
    )
    assert seed_zero.startswith("A run on **t** from `a` (seed 0).")  # seed 0 is a seed; no shots, none shown
    assert "| base model | `a`, weights `(random init)` |" in seed_zero
    assert "| KFP run | `r`: the KFP UI's Runs page |" in seed_zero  # no name: the id alone


def test_a_rerun_of_register_replaces_the_registered_paragraph():
    description = run_card.run_description(data_name="t", data_uri="t", eval_data_uris=[], data_digest="", model={})
    once = run_card.with_registration(description, "pets", 3, "challenger", "HM -0.4 vs champion v2")
    assert once == description.rstrip("\n") + "\n\n**Registered**: `pets` v3, challenger (HM -0.4 vs champion v2).\n"
    again = run_card.with_registration(once, "pets", 3, "champion", "promoted")
    assert again.count(run_card.REGISTERED_HEADING) == 1
    assert again.endswith("\n\n**Registered**: `pets` v3, champion (promoted).\n")
    assert again.startswith(description.rstrip("\n"))


def test_register_leaves_the_pipeline_run_open_for_the_exit_handler(chain):
    assert _parent(chain).info.status == "RUNNING"  # finish_run closes it; `clipcite register` passes close_run
