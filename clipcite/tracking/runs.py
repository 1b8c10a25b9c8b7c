"""MLflow tracking: where MLflow is, the pipeline's run and one nested run per step.

One MLflow run per pipeline run (opened by the pipeline's first step, found again by its KFP run id), and a nested
run per step; ``MLFLOW_RUN_ID``, which KFP's MLflow integration sets per task, is never taken for either. Where
MLflow is (``MLFLOW_TRACKING_URI`` or the pipeline's ``tracking_uri``) is checked before any training: an
unreachable server fails the run at its first step unless tracking is turned off (``tracking_uri=off``).

The model as MLflow serves it is in :mod:`clipcite.tracking.served_model`, the registry's operations in
:mod:`clipcite.tracking.registry`; those three modules are the only ones that import MLflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.pyfunc
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

import clipcite
from clipcite.records import split_step_name, step_name
from clipcite.tracking.default_uri import how_to_set

log = logging.getLogger(__name__)

DISABLED = ("off", "none", "disabled", "false")
KFP_RUN_TAG = "clipcite.kfp_run_id"
STEP_TAG = "clipcite.step"  # a nested run's step name (finetune-lora, validate-lora, evaluate-photo, ...)
KFP_MLFLOW_RUN_TAG = "clipcite.kfp_mlflow_run_id"  # the task run KFP's MLflow integration made, if on
# Evaluation metrics (accuracies in percent) as logged: 0.01 points, what the reports, model cards and the gate's
# reasons print; more digits are noise in the UI's charts and tables (the files keep full precision).
METRIC_DIGITS = 2


class TrackingError(RuntimeError):
    """MLflow cannot be used as configured (unreachable, misconfigured, registry refused)."""


# ------------------------------------------------------------------------------------------------ where MLflow is


def resolve_uri(uri: str = "") -> str | None:
    """The tracking URI to use: ``uri``, else ``MLFLOW_TRACKING_URI``; None when tracking is off."""
    uri = (uri or os.environ.get("MLFLOW_TRACKING_URI", "")).strip()
    if uri.lower() in DISABLED:
        return None
    if not uri:
        give, off = how_to_set()
        raise TrackingError(
            f"no MLflow tracking URI: {give} (e.g. http://mlflow.mlflow.svc:5000 or sqlite:///mlflow.db), or {off} "
            "to run without tracking"
        )
    return uri


_REACHED: set[str] = set()  # servers this process has already checked


def connect(uri: str) -> MlflowClient:
    """A client for ``uri`` (its registry on the same server), after checking that the server answers (a few quick
    tries, not MLflow's minutes of retries), so a wrong address fails the run before any training. ``uri`` as for
    :func:`resolve_uri`. The process's MLflow settings are left alone: whatever talks to MLflow is handed this."""
    resolved = resolve_uri(uri)
    if resolved is None:
        raise TrackingError("tracking is off (tracking_uri=off); no MLflow server to talk to")
    uri = resolved
    client = MlflowClient(uri, registry_uri=uri)
    if uri.startswith(("http://", "https://")) and uri not in _REACHED:
        try:
            with http_retries(2, timeout_s=10):
                client.search_experiments(max_results=1)
            _REACHED.add(uri)
        except Exception as e:  # connection refused, DNS, TLS, 401/403 from an auth proxy
            give, off = how_to_set()
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable or refused the request ({type(e).__name__}: "
                f"{shorten(str(e), 1000)}); check the URI ({give.removeprefix('set ').removeprefix('pass ')}) and "
                "credentials (MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN), or run "
                f"with {off}"
            ) from e
    return client


@contextlib.contextmanager
def http_retries(max_retries: int, *, timeout_s: int | None = None) -> Iterator[None]:
    """MLflow's HTTP retry budget (and request timeout) for the calls inside: MLflow reads them from the process's
    environment on every request, so they are set there and put back afterwards."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    if timeout_s is not None:
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def code_version() -> str:
    """The package version plus the git commit: from ``CLIPCITE_GIT_SHA`` (baked into images), else ``git``."""
    sha = os.environ.get("CLIPCITE_GIT_SHA", "").replace("unknown", "")
    if not sha:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            sha = subprocess.run(
                ["git", "rev-parse", "--short=12", "HEAD"],
                cwd=Path(clipcite.__file__).parent,
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
    return f"{clipcite.__version__}+{sha}" if sha else clipcite.__version__


# ------------------------------------------------------------------------------------------ the pipeline's run


def open_pipeline_run(uri: str, experiment: str, *, kfp_run_id: str = "", run_name: str = "", tags=None) -> str:
    """The MLflow run of this pipeline run: the one tagged with this KFP run id (a retried first step finds it),
    else a new one in ``experiment``.

    ``MLFLOW_RUN_ID`` is not this run: KFP's own MLflow integration (backend/src/v2/common/plugins/mlflow/handler.go,
    release-2.17) sets it, with ``MLFLOW_EXPERIMENT_ID``, in every task to a nested run of that task alone. The
    pipeline's run crosses the DAG as snapshot's ``mlflow_run`` artifact instead; KFP's run is linked by a tag."""
    client = connect(uri)
    experiment_id = _experiment_id(client, experiment)
    found = _find_pipeline_run(client, experiment_id, kfp_run_id)
    if found:
        return found
    run_tags = {KFP_RUN_TAG: kfp_run_id, "clipcite.version": code_version(), **(tags or {})}
    if injected := os.environ.get("MLFLOW_RUN_ID", ""):
        run_tags[KFP_MLFLOW_RUN_TAG] = injected
    run = client.create_run(experiment_id, run_name=run_name or None, tags={k: str(v) for k, v in run_tags.items()})
    log.info("MLflow run %s in experiment %s on %s", run.info.run_id, experiment, uri)
    return run.info.run_id


def _experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {name!r} is deleted; restore it or choose another name")
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_local_artifact_location(client.tracking_uri))
    except MlflowException:  # created meanwhile by a parallel run
        return client.get_experiment_by_name(name).experiment_id


def _local_artifact_location(uri: str) -> str | None:
    """For a sqlite store, artifacts beside the database file (``mlartifacts/``) rather than the cwd of whichever
    process created the experiment; servers choose their own."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///") :]).absolute().parent / "mlartifacts").as_uri()


ERROR_TAG = "clipcite.error"  # a failed step's exception (and the pipeline run's, copied from its failed step)


def _find_pipeline_run(client: MlflowClient, experiment_id: str, kfp_run_id: str) -> str:
    """The MLflow run tagged with this KFP run id, or "" when there is none (yet)."""
    if not kfp_run_id:
        return ""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{KFP_RUN_TAG}` = '{kfp_run_id}'", max_results=1)
    return found[0].info.run_id if found else ""


def finish_pipeline_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    connect(uri).set_terminated(run_id, status)


def close_pipeline_run(
    uri: str, experiment: str, kfp_run_id: str, *, succeeded: bool, error: str = "", failed_task: str = ""
) -> dict:
    """The pipeline's exit handler: end this KFP run's MLflow run FINISHED, or FAILED with the failed step(s) named
    (from the step runs that ended FAILED; step runs still RUNNING were killed with their pod and are closed FAILED).
    Returns what it did; nothing to close (tracking off, or the run failed before snapshot opened one) is fine.

    The KFP backend says neither which task failed nor why (its exit status carries an empty error), so both come
    from the step runs nested under the pipeline's run; where none recorded it, ``failed_task`` (what a local run's
    console saw fail), else the tag says where to look."""
    client = connect(uri)
    experiment_id = _pipeline_experiment(client, experiment)
    run_id = _find_pipeline_run(client, experiment_id, kfp_run_id) if experiment_id else ""
    if not run_id:
        return {"run_id": "", "status": "none"}
    failed, errors, seen = [], [], []
    children = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
    for child in sorted(children, key=lambda r: r.info.start_time or 0):
        step = child.data.tags.get(STEP_TAG, child.info.run_name)
        seen.append(step)
        if child.info.status in ("RUNNING", "SCHEDULED"):
            client.set_terminated(child.info.run_id, "FAILED")
        if child.info.status in ("RUNNING", "SCHEDULED", "FAILED"):
            failed.append(step)
            errors.append(child.data.tags.get(ERROR_TAG, ""))
    status = "FINISHED" if succeeded else "FAILED"
    if not succeeded:
        where = ", ".join(failed) or failed_task or unrecorded_failure(seen)
        client.set_tag(run_id, "clipcite.failed_step", where)
        detail = next((e for e in errors if e), "") or _no_error_text(error, where, kfp_run_id)
        client.set_tag(run_id, ERROR_TAG, shorten(detail, 5000))
        log.error("pipeline run failed at %s; MLflow run %s marked FAILED", where, run_id)
    client.set_terminated(run_id, status)
    return {"run_id": run_id, "status": status, "failed_steps": failed}


def _pipeline_experiment(client: MlflowClient, experiment: str) -> str:
    """The experiment the pipeline's runs are in: by name. (``MLFLOW_EXPERIMENT_ID`` in a KFP task is KFP's own
    MLflow integration's experiment, not necessarily this pipeline's: see :func:`open_pipeline_run`.)"""
    found = client.get_experiment_by_name(experiment)
    return found.experiment_id if found is not None else ""


def unrecorded_failure(seen: list[str]) -> str:
    """Where a failure that no step run recorded happened, from the names of the step runs that exist (``finetune``
    or ``finetune-<method>``, ``validate-<method>``, ``select``, ``evaluate-<domain>``: see
    :func:`clipcite.records.step_name`).

    sample-splits and cache-teacher keep no run of their own (cached: a run id among their inputs would defeat
    KFP's cache), and the other steps open theirs after some work, so a failure there can go unrecorded too. Before
    training opened a run: sample-splits or cache-teacher. With several methods, before select opened its run: a
    candidate's validate (one whose finetune has a run and whose validate has none) or select. After select, or
    after the one method's finetune: an evaluate or register."""
    steps: dict[str, set[str]] = {}
    for name in seen:
        step, qualifier = split_step_name(name)
        steps.setdefault(step, set()).add(qualifier)
    trained = steps.get("finetune", set())
    if not trained:
        suspects = ["sample-splits", "cache-teacher"]
    elif "select" in steps or trained == {""}:  # "": the one method's finetune
        suspects = ["evaluate", "register"]
    else:
        unscored = sorted(trained - steps.get("validate", set()))
        suspects = [step_name("validate", method) for method in unscored] + ["select"]
    return " or ".join(suspects)


def _no_error_text(error: str, where: str, kfp_run_id: str) -> str:
    """The error tag when no step recorded its exception: what KFP said (kfp.local says little, the backend sends
    an empty error), and where the step's own words are."""
    hint = f"see the logs of task {where} in KFP run {kfp_run_id or '(unknown)'}"
    return f"{error.strip()} ({hint})" if error.strip() else f"no error text from KFP: {hint}"


# ----------------------------------------------------------------------------------------------- a step's run


class StepRun:
    """A nested run for one pipeline step; every method does nothing when tracking is off (``client is None``)."""

    def __init__(self, client: MlflowClient | None, run_id: str = "", parent_run_id: str = ""):
        self.client = client
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        self._metrics: list[tuple[bool, Metric]] = []  # (on the parent run?, metric)

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def log_params(self, params: dict, *, parent: bool = False) -> None:
        """Flattened (``a.b.c``) params, values cut to MLflow's limit; ``parent`` logs on the pipeline's run."""
        if not self.enabled:
            return
        flat = [Param(k, _param_value(v)) for k, v in flatten(params).items()]
        run_id = self.parent_run_id if parent else self.run_id
        for start in range(0, len(flat), 100):
            self.client.log_batch(run_id, params=flat[start : start + 100])

    def log_metrics(
        self, metrics: dict, step: int | None = None, *, parent: bool = False, digits: int | None = None
    ) -> None:
        """Numeric values (nested dicts flattened to ``a/b``); buffered and sent in batches. ``digits`` rounds them
        (evaluation summaries: the UI shows every digit MLflow is given)."""
        if not self.enabled:
            return
        now = int(time.time() * 1000)
        for key, value in flatten(metrics, sep="/").items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = float(value) if digits is None else round(float(value), digits)
                self._metrics.append((parent, Metric(key, value, now, step or 0)))
        if len(self._metrics) >= 500:
            self.flush()

    def flush(self) -> None:
        if not self.enabled or not self._metrics:
            return
        for run_id, on_parent in ((self.run_id, False), (self.parent_run_id, True)):
            batch = [m for parent, m in self._metrics if parent == on_parent]
            for start in range(0, len(batch), 1000):
                self.client.log_batch(run_id, metrics=batch[start : start + 1000])
        self._metrics = []

    def log_dataset(
        self, name: str, uri: str, digest: str, context: str, *, rows: int, classes: int, parent: bool = False
    ) -> None:
        """A dataset input (train split, eval set) with its source URI and content digest; ``parent`` also lists
        it on the pipeline's run (the runs table's Datasets column and the run page's Datasets box read a run's
        own inputs, not its children's)."""
        if not self.enabled:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        dataset = MetaDataset(source=resolve_dataset_source(uri), name=name, digest=digest[:36])
        tags = {MLFLOW_DATASET_CONTEXT: context, "rows": str(rows), "classes": str(classes)}
        entry = DatasetInput(dataset._to_mlflow_entity(), [InputTag(k, v) for k, v in tags.items()])
        for run_id in (self.run_id, self.parent_run_id) if parent else (self.run_id,):
            self.client.log_inputs(run_id, datasets=[entry])

    def log_artifacts(self, local: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            path = Path(local)
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str, *, parent: bool = False) -> None:
        if self.enabled:
            self.client.log_text(self.parent_run_id if parent else self.run_id, text, artifact_file)

    def log_table(self, columns: dict[str, list], artifact_file: str, *, parent: bool = False) -> None:
        """A table (column name -> values) as an MLflow table artifact: the run page shows it as a table and the
        run comparison's artifact view lines it up across runs, where one metric per cell would be one chart each."""
        if self.enabled:
            self.client.log_table(self.parent_run_id if parent else self.run_id, columns, artifact_file)

    def link_model(self, model_uri: str) -> None:
        """List a model logged in this step's run (``models:/m-...``) among the pipeline run's outputs too, so the
        pipeline's run page shows it under Logged models."""
        if self.enabled and model_uri.startswith("models:/m-"):
            from mlflow.entities import LoggedModelOutput

            self.client.log_outputs(self.parent_run_id, [LoggedModelOutput(model_uri.removeprefix("models:/"), 0)])

    def log_image(self, path: str | Path, key: str, *, parent: bool = False) -> None:
        """A PNG as an MLflow image under ``key``: the run page previews it and the run-comparison view lines up
        the images of one key across runs (a plain artifact file does neither)."""
        if self.enabled:
            from PIL import Image

            with Image.open(path) as image:
                image.load()
                self.client.log_image(self.parent_run_id if parent else self.run_id, image, key=key, step=0)

    def set_tags(self, tags: dict, *, parent: bool = False) -> None:
        if self.enabled:
            for key, value in tags.items():
                self.client.set_tag(self.parent_run_id if parent else self.run_id, key, str(value))

    @contextlib.contextmanager
    def fluent(self) -> Iterator[None]:
        """This run as MLflow's active run, on this run's server, for the calls that only MLflow's fluent API has:
        ``mlflow.pyfunc.log_model`` takes neither a client nor a run id, it logs to the process's active run on the
        process's tracking URI. Both are process-wide, so they are set for the block alone and put back after it,
        and the run stays RUNNING (it ends with its step, in :func:`step_run`)."""
        if not self.enabled:
            raise TrackingError("tracking is off: no MLflow run to log to")
        with process_uris(self.client.tracking_uri):
            mlflow.start_run(run_id=self.run_id, nested=True, log_system_metrics=False)
            try:
                yield
            finally:
                mlflow.end_run("RUNNING")  # no longer the active run, and not ended


@contextlib.contextmanager
def process_uris(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking and registry URIs set to ``uri`` for the block, for the MLflow code that reads
    them whatever client it was called through (``mlflow.pyfunc.log_model``, in :meth:`StepRun.fluent`; a local
    registry store creating a version from ``models:/m-...``, in :func:`clipcite.tracking.registry.register_version`).
    Put back afterwards as they were, with the ``MLFLOW_*`` variables MLflow copies them into (kfp.local's step
    subprocesses would inherit those) and ``MLFLOW_RUN_ID``, which ``mlflow.end_run`` unsets but belongs to KFP's
    MLflow integration (code after the step, and KFP's launcher, still read it). The one place clipcite touches
    MLflow's globals; they are module variables with no public getter that tells "unset" from "set", hence the
    private reads."""
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    variables = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID")
    environment = {key: os.environ.get(key) for key in variables}
    tracking_uri, registry_uri = tracking_state._tracking_uri, registry_state._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(tracking_uri)  # through the setter: it also resets the tracer that holds the URI
        registry_state._registry_uri = registry_uri  # its setter cannot unset it
        for key, value in environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def step_run(uri: str | None, parent_run_id: str, name: str, *, system_metrics: bool = True) -> Iterator[StepRun]:
    """A nested run named ``name`` under ``parent_run_id``; a do-nothing StepRun when the parent is empty (tracking
    off: the snapshot step returns no run id). Ends FINISHED, or FAILED when the step raises. ``system_metrics``:
    CPU, memory, disk and GPU use sampled into the run while the step runs (``system/*``)."""
    if not parent_run_id or resolve_uri(uri or "") is None:
        yield StepRun(None)
        return
    client = connect(uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    try:
        # Made through the client, never ``mlflow.start_run()``: without a run id that would resume the
        # ``MLFLOW_RUN_ID`` that KFP's MLflow integration injects (its own run of this task) instead of nesting
        # under ours, and it needs the process-wide tracking URI.
        tags = {STEP_TAG: name, "clipcite.version": code_version(), "clipcite.image": _image()}
        created = client.create_run(experiment_id, run_name=name, tags={"mlflow.parentRunId": parent_run_id, **tags})
        run = StepRun(client, created.info.run_id, parent_run_id)
        monitor = _system_metrics(client, run.run_id) if system_metrics else None
        status = "FAILED"
        try:
            yield run
            status = "FINISHED"
        except BaseException as e:  # the step's own words, for the exit handler and the UI
            with contextlib.suppress(Exception):
                client.set_tag(run.run_id, ERROR_TAG, shorten(f"{type(e).__name__}: {e}", 5000))
            raise
        finally:
            try:
                run.flush()
            finally:
                if monitor is not None:
                    monitor.finish()
                client.set_terminated(run.run_id, status)
    except MlflowException as e:
        if not str(e.message).startswith("API request to"):  # MLflow's words for a request that never got through
            raise
        raise TrackingError(
            f"MLflow tracking server {uri} stopped answering during step {name!r} (MLflow's HTTP retries, "
            f"MLFLOW_HTTP_REQUEST_MAX_RETRIES={os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '7')}, ran out): "
            f"{shorten(str(e.message), 500)}"
        ) from e


def _system_metrics(client: MlflowClient, run_id: str):
    """MLflow's sampler of system metrics, started on ``run_id`` through the client's server (what
    ``mlflow.start_run(log_system_metrics=True)`` starts, without making the run the process's active one); None
    where it cannot start (MLflow logs why and the step goes on, as with ``start_run``)."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    try:
        monitor = SystemMetricsMonitor(run_id, tracking_uri=client.tracking_uri)
        monitor.start()
    except Exception as e:  # psutil missing, no /proc: the step runs without them
        log.error("system metrics not logged for MLflow run %s: %s", run_id, e)
        return None
    return monitor


def shorten(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, cut at a word boundary with an ellipsis (an error cut mid-word,
    "Failed to establish a new", reads as if the message were the problem)."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    return (cut[:space] if space > 0 else cut).rstrip(" ,;:(\n") + "…"


def _image() -> str:
    return os.environ.get("CLIPCITE_IMAGE_REF", "local")


def flatten(values: dict, prefix: str = "", sep: str = ".") -> dict:
    out: dict = {}
    for key, value in values.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def _param_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
