"""Where the commands track by default, in one place: ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db`` (the store
``python pipeline.py run`` writes), for every command a person runs (``clipcite snapshot|register|champion``,
``python -m clipcite.tracking.champion_env``, ``pipeline.py run``). Pipeline steps on a cluster do not use it: there an
unset
``tracking_uri`` means the pod's ``MLFLOW_TRACKING_URI`` and fails when that is missing too.

No MLflow import here: ``clipcite --help`` and argument errors must answer without loading it.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from pathlib import Path

LOCAL_STORE = "mlflow.db"  # in the working directory
FLAG = "--tracking-uri"
HELP = f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./{LOCAL_STORE}, the store `pipeline.py run` writes)"

# How the person running this process sets the tracking URI, for error messages: a pipeline parameter in a
# pipeline's step, the flag in a command (``named_by_flag``).
_SETTING: contextvars.ContextVar[str] = contextvars.ContextVar("tracking_setting", default="pipeline")


def default_tracking_uri(given: str = "") -> str:
    """``given``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    return given or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / LOCAL_STORE}"


def require_store(uri: str) -> None:
    """For a command that only reads (``champion``, ``clipcite.tracking.champion_env``): a local SQLite store must
    exist, or MLflow would create an empty one and answer "no such model"."""
    store = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    if store and not Path(store).is_file():
        raise FileNotFoundError(
            f"no MLflow store at {store} (`python pipeline.py run` makes one in the directory it runs in); "
            f"pass {FLAG} URI or set MLFLOW_TRACKING_URI to the store that holds the model"
        )


@contextlib.contextmanager
def named_by_flag() -> Iterator[None]:
    """Errors about the tracking URI name ``--tracking-uri`` (not the pipeline parameter) inside this block."""
    token = _SETTING.set("flag")
    try:
        yield
    finally:
        _SETTING.reset(token)


def how_to_set() -> tuple[str, str]:
    """(how to give the URI, how to turn tracking off) in the words of whoever runs this process."""
    if _SETTING.get() == "flag":
        return f"pass {FLAG} URI (or set MLFLOW_TRACKING_URI)", f"{FLAG} off"
    return "set MLFLOW_TRACKING_URI or the pipeline parameter tracking_uri", "tracking_uri=off"
