"""The hand-off records (clipcite/records.py): each one round-trips through its file; a file without the format tag,
of another version, with an unknown or a missing field is refused naming the file; nested records come back as
dataclasses."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from clipcite.records import (
    AlphaGrid,
    Candidate,
    EvalSet,
    ModelMeta,
    Record,
    RecordError,
    Registration,
    RegistryEntry,
    Selection,
    SelectionRow,
    SetDigest,
    SplitsManifest,
    TrainSummary,
)
from tests.support.records import meta, report

GRID = AlphaGrid(alphas=(0.0, 0.5, 1.0), val_top1=(60.0, 72.5, 70.0), val_images=12, chosen=0.5, rule="best")
ROW = {"top1": 71.0, "base": 80.0, "new": 60.0, "hm": 68.57}
SELECTION = Selection(
    rule="best val_top1",
    tie_points=0.1,
    winner="cite",
    candidates=(
        SelectionRow("cite", 72.0, 12, 10, 3.5, 400, True, test=70.0),
        SelectionRow("ce", 70.0, 12, 20, 2.5, 800, False),
    ),
    test_metric="hm",
    test_key="test_hm",
)
RECORDS: dict[str, Record] = {
    "splits": SplitsManifest(
        protocol="base2new",
        shots=4,
        seed=1,
        val_shots=4,
        val_source="val",
        sources=({"uri": "/data/t", "digest": "abc", "shards": ["part-0.parquet"]},),
        sources_digest="d1",
        train_classes=("a", "b"),
        train_domains=("photo",),
        sets={"train": SetDigest(8, "i1"), "val": SetDigest(8, "i2"), "eval/photo-base": SetDigest(6, "i3")},
        eval_sets=(EvalSet("photo-base", "photo", "base"), EvalSet("photo-new", "photo", "new")),
    ),
    "eval-report": report(
        alpha_grid=[0.5, 1.0],
        champion_version=3,
        train_domains=["photo"],
        domains={"sketch": {"finetuned": ROW}},
        mean={"finetuned": ROW},
        mean_domains=["sketch"],
        sets={"sketch-base": {"domain": "sketch", "subset": "base", "finetuned": {"top1": 71.0}}},
        zeroshot_cached=["sketch-base"],
        models=["zeroshot", "finetuned"],
    ),
    "model": meta(
        alpha_grid=GRID,
        config={"train": {"lr": 1e-4, "alpha_grid": [0.0, 0.5, 1.0]}},
        lora={"rank": 4, "alpha": 8, "file": "lora_adapter.safetensors"},
    ),
    "train-summary": TrainSummary(
        method="cite",
        skipped_steps=0,
        steps=10,
        epochs=2,
        alpha=0.5,
        trainable_parameters=1234,
        logit_scale=100.0,
        batch_size=4,
        images=24,
        classes=3,
        images_per_second=12.5,
        seconds=2.0,
        device="cpu",
        teacher="cache",
        alpha_grid=GRID,
        model_bytes=1000,
        artefact_bytes=1000,
        file_bytes={"open_clip_model.safetensors": 1000},
    ),
    "validation": Candidate("cite", 72.0, 12, 1234, 2.0, 1000),
    "selection": SELECTION,
    "registration": Registration(
        registered_model_name="pets",
        experiment_name="exp",
        model_uri="s3://b/model",
        base_identity="sha256:0",
        classnames=("a", "b"),
        method="cite",
        alpha=0.5,
        domains={"sketch": {"finetuned": ROW}},
        mean={"finetuned": ROW},
        selection=SELECTION,
        registry=RegistryEntry("pets", 4, "champion", "no champion yet", {"metric": "hm"}, "run1", None),
    ),
}


def _body(record: Record) -> dict:
    return json.loads(json.dumps(record.to_dict()))


@pytest.mark.parametrize("kind", list(RECORDS))
def test_every_record_round_trips_through_its_file(kind, tmp_path):
    record = RECORDS[kind]
    where = record.write(tmp_path)
    assert where == str(tmp_path / record.FILE)
    body = json.loads((tmp_path / record.FILE).read_text())
    assert body["format"] == f"clipcite.{kind}/1" == record.format()
    assert type(record).read(tmp_path) == record
    assert type(record).from_dict(body, where) == record


@pytest.mark.parametrize("kind", list(RECORDS))
def test_a_file_of_another_format_is_refused_naming_it(kind, tmp_path):
    record = RECORDS[kind]
    path = tmp_path / record.FILE
    at = re.escape(str(path))
    body = _body(record)
    untagged = {k: v for k, v in body.items() if k != "format"}
    for wrong in (untagged, {**body, "format": f"clipcite.{kind}/2"}, {**body, "format": "clipcite.other/1"}):
        path.write_text(json.dumps(wrong))
        with pytest.raises(RecordError, match=rf"^{at}: format .*rerun the step that writes it"):
            type(record).read(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(RecordError, match=rf"^{at}: expected a JSON object"):
        type(record).read(tmp_path)
    path.write_text('{"format": "clip')
    with pytest.raises(RecordError, match=rf"^{at}: not JSON"):
        type(record).read(tmp_path)


@pytest.mark.parametrize("kind", list(RECORDS))
def test_an_unknown_or_a_missing_field_is_refused_naming_the_file(kind, tmp_path):
    record = RECORDS[kind]
    path = tmp_path / record.FILE
    at = re.escape(str(path))
    body = _body(record)
    path.write_text(json.dumps({**body, "surprise": 1}))
    with pytest.raises(RecordError, match=rf"^{at}: unknown field\(s\) \['surprise'\] for {type(record).__name__}"):
        type(record).read(tmp_path)
    first = dataclasses.fields(record)[0].name  # every record's first field is required
    path.write_text(json.dumps({k: v for k, v in body.items() if k != first}))
    with pytest.raises(RecordError, match=rf"^{at}: missing field\(s\) \['{first}'\] of {type(record).__name__}"):
        type(record).read(tmp_path)


def test_a_nested_records_bad_field_is_named_with_the_file_and_where_it_sits(tmp_path):
    body = _body(RECORDS["train-summary"])
    path = tmp_path / TrainSummary.FILE
    at = re.escape(str(path))
    path.write_text(json.dumps({**body, "alpha_grid": {**body["alpha_grid"], "extra": 1}}))
    with pytest.raises(RecordError, match=rf"^{at}: alpha_grid: unknown field\(s\) \['extra'\] for AlphaGrid"):
        TrainSummary.read(tmp_path)
    path.write_text(json.dumps({**body, "alpha_grid": [0.5]}))
    with pytest.raises(RecordError, match=rf"^{at}: alpha_grid: expected an object for AlphaGrid"):
        TrainSummary.read(tmp_path)
    registration = _body(RECORDS["registration"])
    path = tmp_path / Registration.FILE
    at = re.escape(str(path))
    del registration["selection"]["format"]  # a nested record keeps its own format tag
    path.write_text(json.dumps(registration))
    with pytest.raises(RecordError, match=rf"^{at}: selection: format None"):
        Registration.read(tmp_path)


def test_nested_records_come_back_as_dataclasses(tmp_path):
    for record in RECORDS.values():
        record.write(tmp_path)
    registration = Registration.read(tmp_path)
    assert isinstance(registration.selection, Selection) and isinstance(registration.registry, RegistryEntry)
    assert all(isinstance(r, SelectionRow) for r in registration.selection.candidates)
    assert registration.selection.candidates[0].test == 70.0 and registration.selection.candidates[1].test is None
    assert _body(registration)["selection"]["format"] == Selection.format()
    summary = TrainSummary.read(tmp_path)
    assert isinstance(summary.alpha_grid, AlphaGrid) and summary.alpha_grid.alphas == (0.0, 0.5, 1.0)
    assert isinstance(ModelMeta.read(tmp_path).alpha_grid, AlphaGrid)
    manifest = SplitsManifest.read(tmp_path)
    assert all(isinstance(s, SetDigest) for s in manifest.sets.values())
    assert all(isinstance(s, EvalSet) for s in manifest.eval_sets)
    assert manifest.digest_of("val") == SetDigest(8, "i2") and manifest.digest_of("eval/nope") is None
    assert manifest.val_rows == 8
    assert manifest.eval_sets_of(("photo",), "m") == manifest.eval_sets
    with pytest.raises(ValueError, match=r"no eval set for domain\(s\) \['sketch'\] in m; known domains: \['photo'\]"):
        manifest.eval_sets_of(("sketch",), "m")
    assert isinstance(manifest.train_classes, tuple) and isinstance(manifest.sources, tuple)


def test_a_registration_without_selection_or_registry_round_trips(tmp_path):
    bare = dataclasses.replace(RECORDS["registration"], selection=None, registry=None)
    bare.write(tmp_path)
    assert Registration.read(tmp_path) == bare


def test_a_list_or_object_field_of_the_wrong_kind_is_named_with_the_file(tmp_path):
    from clipcite.records import FORMAT_KEY, RecordError, SplitsManifest

    body = {FORMAT_KEY: SplitsManifest.format(), "protocol": "fewshot", "shots": 1, "seed": 1, "val_shots": 0}
    body |= {"val_source": "", "sources": [], "sources_digest": "d", "train_classes": None, "train_domains": []}
    with pytest.raises(RecordError, match=r"where\.json: train_classes: expected a list, found NoneType"):
        SplitsManifest.from_dict({**body, "sets": {}}, "where.json")
    with pytest.raises(RecordError, match=r"where\.json: sets: expected an object, found list"):
        SplitsManifest.from_dict({**body, "train_classes": [], "sets": []}, "where.json")
