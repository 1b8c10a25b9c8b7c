"""Run configuration: frozen dataclasses with the paper's defaults, YAML presets, ``key=value`` overrides.

Unknown keys and values of the wrong type are errors naming the key, so a typo never silently falls back to a
default. Building blocks never see this module: steps unpack it into plain arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from clipcite.data.prompts import canonical_dataset
from clipcite.train_params import FitParams


class ConfigError(ValueError):
    """A config file or override that cannot be applied."""


@dataclass(frozen=True)
class SplitsConfig:
    protocol: str = "base2new"  # base2new | fewshot (method.md "Evaluation protocols")
    shots: int = 16  # paper: 16 shots for base-to-new and DG
    # validation images per class (what picks among several methods, docs/cluster.md "Several methods"); 0 = K, up
    # to K where the data has fewer; a number > 0 is required (an error names it unless allow_fewer). CoOp: 4
    val_shots: int = 0
    allow_fewer: bool = False  # a class with fewer than K images is an error unless true
    train_split: str = "train"
    val_split: str = "val"
    eval_split: str = "test"
    train_domains: tuple[str, ...] = ()  # empty: every domain of the train split
    eval_domains: tuple[str, ...] = ()  # empty: every domain of the eval split


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "ViT-B-16-quickgelu"  # paper: ViT-B/16 with OpenAI weights (which use QuickGELU)
    pretrained: str = "openai"  # open_clip tag, local checkpoint file, or "" for random init
    init_seed: int = 0  # random init only
    template: str = ""  # "" = the dataset's CoOp template (classes.json), else this one


@dataclass(frozen=True)
class TeacherConfig:
    mode: str = "cache"  # cache: replay cache-teacher's outputs; online: run the frozen teacher each step
    dtype: str = "float32"  # storage precision of the cache (float16 halves it)
    batch_size: int = 256


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 256
    zeroshot_baseline: bool = True  # evaluate the zero-shot model on the same sets beside the fine-tuned one
    num_workers: int = 0
    mean_over: str = "ood"  # decision: the mean leaves out the trained-on domains (paper's OOD average); or "all"


@dataclass(frozen=True)
class GateConfig:
    """When a new model version takes the ``champion`` alias (both models evaluated on the same eval sets)."""

    metric: str = "auto"  # hm | top1 | balanced_accuracy | base | new; auto = hm under base2new, else top1
    domain: str = ""  # the primary metric on this domain; "" = the summary's mean (eval.mean_over says over which)
    min_improvement: float = 0.0  # points the primary metric must gain (a tie never promotes)
    max_domain_drop: float = 1.0  # points any kept domain may lose on its metric
    kept_domains: tuple[str, ...] = ()  # domains the drop rule protects; empty = every eval domain
    evaluate_champion: bool = True  # evaluate the current champion beside the new model (else: never promote)


@dataclass(frozen=True)
class SelectionConfig:
    """Which of several candidate methods a run registers (pipeline.py --methods): compared on validation."""

    metric: str = "top1"  # top1 | balanced_accuracy (mean per-class recall: classes of unequal size)


@dataclass(frozen=True)
class Config:
    seed: int = 1  # CoOp seeds 1, 2, 3
    device: str = "auto"  # auto = cuda when available
    splits: SplitsConfig = field(default_factory=SplitsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: FitParams = field(default_factory=FitParams)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    batch_size_by_dataset: dict[str, int] = field(default_factory=dict)  # paper: eurosat 16, imagenet 64

    def batch_size_for(self, dataset: str) -> int:
        """The per-dataset batch size, matched on the canonical dataset name (EuroSAT, eurosat, Eurosat: one)."""
        wanted = _dataset_key(dataset)
        for name, size in self.batch_size_by_dataset.items():
            if wanted and _dataset_key(name) == wanted:
                return size
        return self.train.batch_size


def _dataset_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", canonical_dataset(name).lower())


PRESETS = Path(__file__).parent / "presets"


def preset_path(source: str | Path) -> Path:
    """A YAML file path, or the name of a preset shipped in clipcite/presets (``default``, ``paper_vitb16``)."""
    path = Path(source)
    if path.is_file():
        return path
    named = PRESETS / f"{path.stem if path.suffix == '.yaml' else source}.yaml"
    if named.is_file():
        return named
    known = sorted(p.stem for p in PRESETS.glob("*.yaml"))
    raise ConfigError(f"{source}: config file not found, and not a preset name ({', '.join(known)})")


def load_config(source: str | Path | None = None, overrides: typing.Sequence[str | tuple[str, object]] = ()) -> Config:
    """Defaults, then the YAML file or preset, then overrides: ``"section.key=value"`` strings (values parsed as
    YAML) or ``(key, value)`` pairs."""
    data: dict = {}
    if source:
        path = preset_path(source)
        data = _parse_yaml(path.read_text(), str(path))
    return _finish(data, overrides, str(source or "config"))


def config_from_yaml(
    text: str, overrides: typing.Sequence[str | tuple[str, object]] = (), *, where: str = "config text"
) -> Config:
    """A config from YAML text (e.g. the resolved config a pipeline step passes on); ``where`` names it in errors."""
    return _finish(_parse_yaml(text, where), overrides, where)


def _parse_yaml(text: str, where: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping of sections")
    return data


def _finish(data: dict, overrides, where: str) -> Config:
    for item in overrides:
        if isinstance(item, str):
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-5")
            value = yaml.safe_load(raw) if raw.strip() else ""
        else:
            key, value = item
            raw = repr(value)
        _check_override(str(key).strip(), value, raw)
        node = data
        *parents, leaf = str(key).strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part} is not a section")
        node[leaf] = value
    config = _build(Config, data, where=where)
    try:
        config.train.validate()
    except ValueError as e:  # one error type for every config problem, whatever check found it
        raise ConfigError(f"{where}: train: {e}") from e
    if config.splits.val_shots < 0:
        raise ConfigError(f"{where}: splits: val_shots must be >= 0 (0 = the shots, K), got {config.splits.val_shots}")
    if config.eval.mean_over not in ("ood", "all"):
        raise ConfigError(f"{where}: eval: mean_over must be 'ood' or 'all', got {config.eval.mean_over!r}")
    if config.gate.metric == "balanced_accuracy" and config.splits.protocol == "base2new":
        raise ConfigError(
            f"{where}: gate: metric=balanced_accuracy needs splits.protocol=fewshot (base-to-new reports base, new "
            "and hm)"
        )
    if config.selection.metric not in ("top1", "balanced_accuracy"):
        raise ConfigError(
            f"{where}: selection: metric must be 'top1' or 'balanced_accuracy', got {config.selection.metric!r}"
        )
    return config


def _check_override(key: str, value, raw: str) -> None:
    """An override's key and value against the Config dataclasses, so the error names the user's override (the
    preset was fine), with a "did you mean" for a misspelt key."""
    cls, path = Config, []
    for part in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if not fields:
            raise ConfigError(f"override {key}={raw}: {'.'.join(path)} is not a section")
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f"did you mean {'.'.join([*path, close[0]])!r}? " if close else ""
            section = ".".join(path) or "config"
            raise ConfigError(
                f"override {key}={raw}: {section}: unknown key(s) {part}; {hint}known: {', '.join(sorted(fields))}"
            )
        cls = typing.get_type_hints(cls)[part]
        path.append(part)
    if not dataclasses.is_dataclass(cls):
        _coerce(value, cls, f"override {key}={raw}: {key}")


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    values = {name: _coerce(value, hints[name], f"{where}: {name}") for name, value in data.items()}
    return cls(**values)


def _coerce(value, hint, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is types.UnionType:  # e.g. float | str: the first member that accepts the value
        for member in args:
            try:
                return _coerce(value, member, where)
            except ConfigError:
                continue
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # JSON through KFP/protobuf has no int type
            return int(value)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is tuple and isinstance(value, list | tuple):
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) == len(value):
            return tuple(_coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, items, strict=True)))
    elif origin is dict and isinstance(value, dict):
        return {_coerce(k, args[0], where): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    raise ConfigError(f"{where}: expected {_name(hint)}, got {value!r} ({type(value).__name__})")


def _name(hint) -> str:
    if typing.get_origin(hint) is types.UnionType:
        return " or ".join(_name(member) for member in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


def to_dict(config) -> dict:
    """Plain dict (tuples as lists) for JSON/YAML output and tracking."""

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
