"""The model as MLflow serves it: a pyfunc written as models-from-code (``clipcite/tracking/mlflow_model.py``, no
pickled class) whose weights and configs are plain files (safetensors) under the model's ``artifacts/model``.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.metadata
import shutil
import tempfile
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, set_model
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

import clipcite
from clipcite.data.prompts import DEFAULT_TEMPLATE
from clipcite.records import MODEL_ARTIFACT, ModelMeta
from clipcite.tracking.runs import StepRun, code_version

__all__ = ["ClassifierModel", "log_classifier", "set_model"]  # set_model: for the models-from-code file
RUNTIME_PACKAGES = (
    "torch",
    "torchvision",
    "open_clip_torch",
    "numpy",
    "pillow",
    "pyarrow",
    "safetensors",
    "pyyaml",
    "tqdm",
    "pandas",
    "boto3",
    "matplotlib",
    "mlflow",
)


class ClassifierModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of :class:`clipcite.model.classifier.Classifier`.

    Input: a DataFrame with an ``image`` column of encoded bytes (base64 strings over REST) or HxWxC uint8 arrays.
    Params: ``labels`` (default: the trained classes), ``template``, ``top_k``. Output: ``label``, ``score`` and,
    with top_k > 1, ``top_labels``/``top_scores``.
    """

    # No type-hint validation: the classifier checks its input itself (clear 400s). Without this, MLflow warns
    # "Add type hints to the predict method" whenever this module is imported, i.e. on CLI commands.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import torch

        from clipcite.model.classifier import Classifier

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.classifier = Classifier(context.artifacts[MODEL_ARTIFACT], device=device)

    def predict(self, context, model_input, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        try:
            images = _input_images(model_input)
            results = self.classifier.predict(
                images,
                labels=list(params["labels"]) if params.get("labels") is not None else None,
                template=params.get("template") or None,
                top_k=int(params.get("top_k") or 1),
                item=f"row {{}} of column {IMAGE!r}",
            )
        except ValueError as e:  # the caller's input (an image, the labels, top_k): served as a 400 that says why
            raise BadInput.invalid_parameter_value(str(e)) from e
        return pd.DataFrame(results)


class BadInput(MlflowException):
    """A request the model cannot answer: a 400 whose message is ours alone, short, naming the row and column.

    MLflow's scoring server rewrites the message of any MlflowException the model raises to ``Failed to predict
    data '<the whole input DataFrame>'. Error: ...`` (mlflow 3.17, ``pyfunc/scoring_server.invocations``), a pandas
    dump of every image sent; this message is set once, by the constructor, and later rewrites are ignored."""

    @property  # type: ignore[override]
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


IMAGE = "image"  # the input column
EXPECTED = f"expected a column {IMAGE!r} of images (encoded bytes: PNG, JPEG, ...; base64 strings over REST)"


def _input_images(model_input) -> list:
    if isinstance(model_input, pd.DataFrame):
        if IMAGE not in model_input.columns:  # MLflow drops the columns the signature does not name
            raise ValueError(f"no {IMAGE!r} column: {EXPECTED}")
        values = list(model_input[IMAGE])
    elif isinstance(model_input, dict) and IMAGE in model_input:
        values = list(model_input[IMAGE])
    else:
        values = list(model_input)
    return [_base64(v, i) if isinstance(v, str) else v for i, v in enumerate(values)]


def _base64(value: str, row: int) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as e:  # binascii.Error
        raise ValueError(f"row {row} of column {IMAGE!r}: not base64 ({e}); expected a base64 image file") from e


MODEL_CODE = Path(__file__).with_name("mlflow_model.py")


def log_classifier(run: StepRun, model_dir: Path, *, example_images: list[bytes]) -> str:
    """Log the fine-tuned model as a pyfunc (models-from-code) in ``run``; returns its ``models:/`` URI."""
    meta = ModelMeta.read(model_dir)
    labels = list(meta.classnames)
    template = meta.template or DEFAULT_TEMPLATE
    signature = ModelSignature(
        # Optional only so that a request without it reaches predict and gets a one-line 400 naming the column:
        # MLflow's own check answers with two dumps of the input DataFrame. predict requires it.
        inputs=Schema([ColSpec("binary", IMAGE, required=False)]),
        outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")]),
        params=ParamSchema(
            [
                ParamSpec("labels", "string", labels, shape=(-1,)),
                ParamSpec("template", "string", template),
                ParamSpec("top_k", "long", 1),
            ]
        ),
    )
    with tempfile.TemporaryDirectory() as tmp, run.fluent():
        code = _package_code(Path(tmp))
        info = mlflow.pyfunc.log_model(
            name="classifier",
            python_model=str(MODEL_CODE),
            artifacts={MODEL_ARTIFACT: str(model_dir)},
            code_paths=[str(code)],
            signature=signature,
            input_example=pd.DataFrame({"image": example_images}),
            pip_requirements=_pip_requirements(),
            metadata={"clipcite_version": code_version(), "classnames": labels, "template": template},
        )
    return info.model_uri


def _package_code(tmp: Path) -> Path:
    """The clipcite package's code and small configs (not the toy world's checkpoint) for ``code_paths``."""
    source = Path(clipcite.__file__).parent
    target = tmp / "clipcite"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors", "*.sha256", "*.pyc"))
    return target


def _pip_requirements() -> list[str]:
    pins = []
    for name in RUNTIME_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            pins.append(f"{name}=={importlib.metadata.version(name)}")
    return pins
