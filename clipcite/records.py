"""What the steps hand each other: each file one step writes and another reads, as one frozen dataclass with its
file name, its format version and one ``read``/``write`` pair.

Torch-free on purpose: steps that only read a record (register, select, the exit handler) must not pay for the model
code to learn a field. The JSON layout is each dataclass's fields plus ``"format": "clipcite.<kind>/<version>"``; a
file without it, or of another version, is refused with the file's address, so a step never guesses at the meaning
of an old field. Per-model metric tables (``{model: {metric: value}}``) stay mappings: their keys are the models a
run evaluated, which only the run knows.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from clipcite import storage

# Files beside a saved model (an open_clip local-dir folder plus the method's own files).
META_FILE = "clipcite.json"  # ModelMeta
WEIGHTS_FILE = "open_clip_model.safetensors"
OPENCLIP_CONFIG_FILE = "open_clip_config.json"
HEAD_FILE = "class_head.safetensors"  # a linear probe's trained class weights, beside the (zero-shot) weights
LORA_FILE = "lora_adapter.safetensors"  # a LoRA run's adapter alone (the weights file holds it merged)
CURVES_FILE = "curves.jsonl"  # every loss term and the learning rate per step (finetune)
MODEL_ARTIFACT = "model"  # the weights folder (a saved model's folder) among the served pyfunc model's artifacts

FORMAT_KEY = "format"
Metrics = dict[str, dict[str, Any]]  # model name -> metric -> value (top1, base, new, hm, ...)

R = TypeVar("R", bound="Record")


class RecordError(ValueError):
    """A hand-off file that this clipcite cannot read: missing fields, unknown fields, another format version."""


@dataclass(frozen=True)
class Record:
    """The read/write pair every hand-off file shares; a subclass names its ``FILE``, ``KIND`` and ``VERSION``."""

    FILE: ClassVar[str]
    KIND: ClassVar[str]
    VERSION: ClassVar[int] = 1

    @classmethod
    def format(cls) -> str:
        return f"clipcite.{cls.KIND}/{cls.VERSION}"

    def to_dict(self) -> dict[str, Any]:
        return {FORMAT_KEY: self.format(), **dataclasses.asdict(self)}

    def write(self, folder: str | Path) -> str:
        """Write ``<folder>/<FILE>`` (a local folder or an ``s3://`` prefix); returns its address."""
        where = storage.join(str(folder), self.FILE)
        storage.write_text(where, json.dumps(self.to_dict(), indent=2))
        return where

    @classmethod
    def read(cls: type[R], folder: str | Path) -> R:
        """Read ``<folder>/<FILE>``; a file of another format names itself and the step that writes this one."""
        where = storage.join(str(folder), cls.FILE)
        try:
            body = json.loads(storage.read_text(where))
        except json.JSONDecodeError as e:
            raise RecordError(f"{where}: not JSON ({e})") from None
        return cls.from_dict(body, where)

    @classmethod
    def from_dict(cls: type[R], body: Any, where: str) -> R:
        if not isinstance(body, dict):
            raise RecordError(f"{where}: expected a JSON object, found {type(body).__name__}")
        found = body.get(FORMAT_KEY)
        if found != cls.format():
            raise RecordError(
                f"{where}: format {found!r}, this clipcite reads {cls.format()!r}: the file was written by another "
                "clipcite version; rerun the step that writes it"
            )
        record: R = _build(cls, {k: v for k, v in body.items() if k != FORMAT_KEY}, where)
        return record


def _build(cls: type, body: dict[str, Any], where: str) -> Any:
    """``cls`` from its JSON body: nested dataclasses, tuples and dicts of them rebuilt from their hints."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(body) - names)
    if unknown:
        raise RecordError(f"{where}: unknown field(s) {unknown} for {cls.__name__}")
    required = {f.name for f in dataclasses.fields(cls) if _required(f)}
    missing = sorted(required - set(body))
    if missing:
        raise RecordError(f"{where}: missing field(s) {missing} of {cls.__name__}")
    return cls(**{k: _value(hints[k], v, f"{where}: {k}") for k, v in body.items()})


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _value(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _value(next(a for a in args if a is not type(None)), value, where)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object for {hint.__name__}")
        return _build(hint, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise RecordError(f"{where}: expected a list, found {type(value).__name__}")
        return tuple(_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict and len(args) == 2:
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, found {type(value).__name__}")
        return {k: _value(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return value


# --- sample-splits -> cache-teacher, finetune, validate, evaluate


@dataclass(frozen=True)
class SetDigest:
    """A written split: its row count and the digest of its ids (what the caches key on)."""

    rows: int
    ids_sha256: str


@dataclass(frozen=True)
class EvalSet:
    """One eval set of the splits (``eval/<name>``): a domain, and its subset under base-to-new."""

    name: str
    domain: str
    subset: str  # all | base | new


@dataclass(frozen=True)
class SplitsManifest(Record):
    """``manifest.json`` of sample-splits: how the splits were drawn, from which sources, and what each holds."""

    FILE: ClassVar[str] = "manifest.json"
    KIND: ClassVar[str] = "splits"

    protocol: str
    shots: int
    seed: int
    val_shots: int
    val_source: str  # the split the validation images came from ("" = none: no val split, no spare)
    sources: tuple[dict[str, Any], ...]  # each table's snapshot (data.files.source_snapshot)
    sources_digest: str
    train_classes: tuple[str, ...]
    train_domains: tuple[str, ...]  # the source domains: evaluate's OOD mean leaves them out
    sets: dict[str, SetDigest]  # "train", "val", "eval/<name>"
    eval_sets: tuple[EvalSet, ...] = ()

    def digest_of(self, name: str) -> SetDigest | None:
        return self.sets.get(name)

    @property
    def val_rows(self) -> int:
        val = self.sets.get("val")
        return val.rows if val else 0

    def eval_sets_of(self, domains: tuple[str, ...] | list[str], where: str) -> tuple[EvalSet, ...]:
        """The eval sets of ``domains`` (all when empty); an unknown domain is an error naming the known ones."""
        chosen = tuple(s for s in self.eval_sets if not domains or s.domain in domains)
        if not chosen:
            known = sorted({s.domain for s in self.eval_sets})
            raise ValueError(f"no eval set for domain(s) {list(domains)} in {where}; known domains: {known}")
        return chosen


# --- finetune -> validate, evaluate, register, the served model


@dataclass(frozen=True)
class AlphaGrid:
    """``train.alpha_grid``'s record: the validation score of each alpha and the one chosen."""

    alphas: tuple[float, ...]
    val_top1: tuple[float, ...]
    val_images: int
    chosen: float
    rule: str


@dataclass(frozen=True)
class ModelMeta(Record):
    """``clipcite.json`` beside a saved model's weights: what evaluate, register and the served model need to know
    (no run ids: the registry links a version to its run)."""

    FILE: ClassVar[str] = META_FILE
    KIND: ClassVar[str] = "model"

    arch: str
    base_identity: str
    method: str
    classnames: tuple[str, ...]
    template: str
    dataset: str = ""
    alpha: float = 1.0
    seed: int = 0
    steps: int = 0
    logit_scale: float = 100.0  # the loss temperature the run used (train.logit_scale resolved)
    config: dict[str, Any] = field(default_factory=dict)
    alpha_grid: AlphaGrid | None = None
    note: str = ""  # the method's own word on what it changed (the model card shows it)
    lora: dict[str, Any] | None = None  # lora: rank, alpha, adapter file
    class_head: dict[str, Any] | None = None  # linear_probe: the class head's file, classes, penalty


@dataclass(frozen=True)
class TrainSummary(Record):
    """``train_summary.json`` of finetune: what ran, how fast, and what the method adds to the base model."""

    FILE: ClassVar[str] = "train_summary.json"
    KIND: ClassVar[str] = "train-summary"

    method: str
    skipped_steps: int
    steps: int
    epochs: int
    alpha: float
    trainable_parameters: int
    logit_scale: float
    batch_size: int
    images: int
    classes: int
    images_per_second: float
    seconds: float  # training, and the alpha grid's validation passes: what the method costs
    device: str
    teacher: str = "none"  # cache | online | none
    alpha_grid: AlphaGrid | None = None
    model_bytes: int = 0  # the folder as served
    artefact_bytes: int = 0  # what the method adds: its own files, the full weights of a full fine-tune, or 0
    file_bytes: dict[str, int] = field(default_factory=dict)


# --- validate -> select -> register, the card


class ValidationScore:
    """The score the selection compares, for the records that carry a candidate's validation numbers."""

    metric: str
    val_top1: float
    val_balanced_accuracy: float

    @property
    def score(self) -> float:
        """Top-1 or balanced accuracy on the validation split, as ``metric`` (selection.metric) says."""
        return self.val_balanced_accuracy if self.metric == "balanced_accuracy" else self.val_top1


@dataclass(frozen=True)
class Candidate(ValidationScore, Record):
    """``validation.json`` of validate: one trained method as the selection sees it, its validation score and
    costs, and no test metric."""

    FILE: ClassVar[str] = "validation.json"
    KIND: ClassVar[str] = "validation"

    method: str
    val_top1: float  # points on the validation split
    val_images: int
    trainable_parameters: int
    seconds: float  # training time
    artefact_bytes: int  # what the method adds to the base model
    val_balanced_accuracy: float = 0.0  # mean per-class recall (points) on the validation split
    metric: str = "top1"  # the validation metric the selection compares (selection.metric)


@dataclass(frozen=True)
class SelectionRow(ValidationScore):
    """One candidate's row of the selection table; ``test`` is joined by register after the choice, for the
    record (the choice was made on validation alone)."""

    method: str
    val_top1: float
    val_images: int
    trainable_parameters: int
    seconds: float
    artefact_bytes: int
    selected: bool
    test: float | None = None
    val_balanced_accuracy: float = 0.0
    metric: str = "top1"


@dataclass(frozen=True)
class Selection(Record):
    """``selection.json`` of select: the rule, the winner and one row per candidate (best validation first)."""

    FILE: ClassVar[str] = "selection.json"
    KIND: ClassVar[str] = "selection"

    rule: str
    tie_points: float
    winner: str
    candidates: tuple[SelectionRow, ...]
    test_metric: str = ""  # set with the candidates' test numbers: the gate's metric, and where it is read
    test_key: str = ""  # the metric's key on each validate-<method> run

    def columns(self) -> dict[str, list[Any]]:
        """The table as columns (MLflow's ``log_table``)."""
        rows = [dataclasses.asdict(r) for r in self.candidates]
        return {key: [row[key] for row in rows] for key in rows[0]}


# --- evaluate -> register, aggregate, local runs


@dataclass(frozen=True)
class EvalReport(Record):
    """``metrics.json``: the evaluation of one model over eval sets (evaluate writes one per domain task; register
    merges them into one, which also lists the ``models`` evaluated on every set)."""

    FILE: ClassVar[str] = "metrics.json"
    KIND: ClassVar[str] = "eval-report"

    model: str  # where the evaluated model lives (KFP's .uri on a cluster)
    method: str
    alpha: float | None
    seed: int | None
    template: str  # "" = each eval set's own (sets.<name>.template)
    train_domains: tuple[str, ...]
    mean_over: str
    domains: dict[str, Metrics]  # domain -> model -> metric
    mean: Metrics  # model -> metric, over mean_domains
    mean_domains: tuple[str, ...]
    source_domains: tuple[str, ...]
    sets: dict[str, dict[str, Any]]  # eval set -> {model: metrics, domain, subset, template}
    alpha_grid: tuple[float, ...] | None = None  # set: alpha was chosen from these on validation
    champion_version: int | None = None
    zeroshot_cached: tuple[str, ...] = ()  # eval sets whose zero-shot metrics came from the baseline cache
    models: tuple[str, ...] = ()  # register's merged report: the models scored on every eval set


# --- register -> local runs, retraining, the user


@dataclass(frozen=True)
class RegistryEntry:
    """What the registry did with the model (register, with tracking on)."""

    name: str
    version: int
    decision: str  # champion | challenger
    reason: str
    gate: dict[str, Any]
    mlflow_run_id: str
    champion_before: int | None = None


@dataclass(frozen=True)
class Registration(Record):
    """``registration.json`` of register: where the model is, what it is, its mean metrics and the registry's
    answer (none with tracking off)."""

    FILE: ClassVar[str] = "registration.json"
    KIND: ClassVar[str] = "registration"

    registered_model_name: str
    experiment_name: str
    model_uri: str
    base_identity: str
    classnames: tuple[str, ...]
    method: str
    alpha: float | None
    domains: dict[str, Metrics]
    mean: Metrics
    selection: Selection | None = None
    registry: RegistryEntry | None = None

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        if self.selection is not None:  # nested records keep their own format tag
            body["selection"] = self.selection.to_dict()
        return body

    @classmethod
    def from_dict(cls, body: Any, where: str) -> Registration:
        selection = body.get("selection") if isinstance(body, dict) else None
        record = super().from_dict({**body, "selection": None}, where) if isinstance(body, dict) else None
        if record is None:
            raise RecordError(f"{where}: expected a JSON object")
        if selection is None:
            return record
        return dataclasses.replace(record, selection=Selection.from_dict(selection, f"{where}: selection"))


# Steps with a task per candidate method or per domain, named ``<step>-<method>`` / ``<step>-<domain>``.
QUALIFIED_STEPS = ("finetune", "validate", "evaluate")


def step_name(step: str, qualifier: str = "") -> str:
    """The name of one task of ``step`` (its MLflow run, its KFP display name, its checkpoint folder): ``step``, or
    ``<step>-<qualifier>`` for one of several: ``finetune-lora`` and ``validate-lora`` train and score the
    candidate method lora, ``evaluate-photo`` evaluates the domain photo."""
    return f"{step}-{qualifier}" if qualifier else step


def split_step_name(name: str) -> tuple[str, str]:
    """(step, qualifier) of a name :func:`step_name` made: ``("finetune", "lora")``, ``("finetune", "")``; a step
    whose own name has a hyphen (``cache-teacher``) is not split."""
    for step in QUALIFIED_STEPS:
        if name.startswith(f"{step}-"):
            return step, name[len(step) + 1 :]
    return name, ""
