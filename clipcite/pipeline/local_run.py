"""``python pipeline.py run``'s output: kfp.local's whole log to a file, one line per task, the failed task's error.

kfp.local prints every task's executor input, streamed logs and outputs (about 1,500 lines for the default run) and
ends a failure with only the failed task's name ("Inner task failed: 'snapshot'"), the step's own message buried
above. ``TaskLog`` reads that stream as it is written: it keeps all of it in a log file (and on the terminal with
``-v``), prints a line when a task starts, finishes or comes from the cache, and remembers the last exception line a
task printed, so a failed run ends with what went wrong.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from clipcite.evaluation.selection import METRIC_NAMES
from clipcite.records import EvalReport, Registration, Selection
from clipcite.steps import kfp_backend

FAILED_TASK_FILE = "failed-task.json"  # under the output folder's logs/: the task that failed, for the exit task
ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '([^']+)'")
FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
CACHED = re.compile(r"Task '?([\w-]+)'? cache hit")
FAILED_TASK = re.compile(r"Inner task failed: '([^']+)'")
# A ParallelFor's iterations all carry the task's name; the loop item is in the executor input kfp.local prints
# after "Executing task" (``"domain": "photo",``) and in the outputs after "finished" (``metadata={'domain': ...}``).
LOOP_TASKS = {"evaluate": "domain"}
LOOP_INPUT = re.compile(r'^\s*"(\w+)": "([^"]*)",?$')
LOOP_OUTPUT = re.compile(r"metadata=\{'(\w+)': '([^']*)'\}")
# The last line of a Python traceback: "ValueError: ...", "clipcite.config.ConfigError: ...".
RAISED = re.compile(r"^\s*(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt))(?::\s*(.*))?$")


class TaskLog:
    """A text stream for kfp.local's output (stdout, stderr and log records go here during a run)."""

    def __init__(
        self,
        path: Path,
        terminal: TextIO,
        *,
        echo: bool,
        failure_file: Path | None = None,
        names: dict[str, str] | None = None,
    ) -> None:
        """``failure_file``: where the first task that fails is written, with its last exception line, for the exit
        task (:func:`kfp_backend.write_local_failure`); an earlier run's is removed. ``names``: kfp.local's task
        name -> the name a person reads (:func:`display_names`: ``finetune-2`` -> ``finetune-linear_probe``)."""
        self.names = names or {}
        path.parent.mkdir(parents=True, exist_ok=True)
        if failure_file is not None:
            failure_file.unlink(missing_ok=True)
        self.failure_file = failure_file
        self.failed_task = ""
        self.path = path
        self.file = path.open("w", encoding="utf-8")
        self.terminal = terminal
        self.echo = echo
        self.started = time.monotonic()
        self.last_error = ""
        self._pending = ""
        self._starting: dict[str, int] = {}  # loop task -> starts not yet printed (waiting for the loop item)
        self._finishing: dict[str, str] = {}  # loop task -> the status of a finish waiting for its loop item
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.file.write(text)
            if self.echo:
                self.terminal.write(text)
            *lines, self._pending = (self._pending + text).split("\n")
            for line in lines:
                self._read(ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.file.flush()
        self.terminal.flush()

    def close(self) -> None:
        self.file.close()

    def _read(self, line: str) -> None:
        raised = RAISED.match(line)
        if raised:
            self.last_error = f"{raised[1]}: {raised[2]}" if raised[2] else raised[1]
        elif started := STARTED.search(line):
            if started[1] in LOOP_TASKS:
                self._starting[started[1]] = self._starting.get(started[1], 0) + 1
            else:
                self._progress(f"{self._name(started[1])} ...")
        elif finished := FINISHED.search(line):
            self._finished(finished[1], finished[2])
        elif cached := CACHED.search(line):
            self._progress(f"{self._name(cached[1])}: reused from the cache")
        else:
            self._loop_item(line)

    def _loop_item(self, line: str) -> None:
        """A loop task's start or finish line, once its loop item (the domain) shows in kfp.local's output."""
        if found := LOOP_INPUT.match(line):
            for task, key in LOOP_TASKS.items():
                if key == found[1] and self._starting.get(task):
                    self._starting[task] -= 1
                    self._progress(f"{task} {found[2]} ...")
        elif found := LOOP_OUTPUT.search(line):
            for task, key in LOOP_TASKS.items():
                if key == found[1] and task in self._finishing:
                    self._progress(f"{task} {found[2]}: {_outcome(self._finishing.pop(task))}")

    def _finished(self, task: str, status: str) -> None:
        if task in self._finishing:  # an earlier iteration's finish whose item never showed
            self._progress(f"{task}: {_outcome(self._finishing.pop(task))}")
        if task in LOOP_TASKS and status == "SUCCESS":  # outputs (with the item) follow; a failure prints none
            self._finishing[task] = status
        else:
            self._progress(f"{self._name(task)}: {_outcome(status)}")
        if status != "SUCCESS" and not self.failed_task:
            self.failed_task = task = self._name(task)
            if self.failure_file is not None:  # for the exit task, started after this line
                kfp_backend.write_local_failure(self.failure_file, task, self.last_error)

    def _name(self, task: str) -> str:
        return self.names.get(task, task)

    def _progress(self, message: str) -> None:
        if not self.echo:
            self.terminal.write(f"[{time.monotonic() - self.started:5.0f}s] {message}\n")
            self.terminal.flush()

    def failure(self, error: Exception) -> str:
        """What a failed run ends with: the failed task and the last exception line printed before it failed."""
        found = FAILED_TASK.search(ANSI.sub("", str(error)))
        task = f"task {self._name(found[1])!r} failed" if found else ANSI.sub("", str(error))
        return f"{task}: {self.last_error}" if self.last_error else task


@contextlib.contextmanager
def captured(
    path: Path, *, echo: bool, failure_file: Path | None = None, names: dict[str, str] | None = None
) -> Iterator[TaskLog]:
    """Send this process's stdout, stderr and root log records to a ``TaskLog`` for the duration.

    Also puts back ``print``: kfp.local indents a task's streamed lines by swapping ``builtins.print`` for the task's
    duration, and two ParallelFor iterations that overlap restore each other's swap, so after a run with parallel
    evaluate tasks ``print`` could stay indented and the summary printed after it start with four spaces."""
    terminal, plain_print = sys.stdout, builtins.print
    log = TaskLog(path, terminal, echo=echo, failure_file=failure_file, names=names)
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = [handler]
    root.setLevel(logging.INFO)  # kfp.local's cache hits are INFO records outside its own logging context
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield log
    finally:
        builtins.print = plain_print
        root.handlers, level = saved
        root.setLevel(level)
        log.close()


def display_names(pipeline_func) -> dict[str, str]:
    """kfp.local's task names -> the DAG's display names where they differ: with several methods kfp.local numbers
    the second finetune and validate tasks (``finetune-2``), while the DAG names each after its method
    (``finetune-linear_probe``, the name of its MLflow run too)."""
    spec = pipeline_func.pipeline_spec
    dags = [spec.root.dag, *(c.dag for c in spec.components.values() if c.HasField("dag"))]
    return {key: task.task_info.name for dag in dags for key, task in dag.tasks.items() if key != task.task_info.name}


def run_dag(pipeline_func, params: dict, out: Path, *, caching: bool, quiet: bool, runner: str = "subprocess") -> dict:
    """Run ``pipeline_func(**params)`` through kfp.local with its pipeline root and cache under ``out``, each step a
    subprocess here or (``runner="docker"``) a container of its image (:mod:`clipcite.pipeline.local_docker`).
    kfp.local's output goes to
    ``out/logs/run-<time>.log`` (and to the terminal unless ``quiet``); a failed task raises RuntimeError with that
    task's own exception message."""
    from kfp import local

    if runner == "docker":
        from clipcite.pipeline import local_docker

        task_runner = local_docker.docker_runner(params, out)
    else:
        task_runner = local.SubprocessRunner(use_venv=False)
    local.init(
        runner=task_runner,
        pipeline_root=str(out / "root"),
        enable_caching=caching,
        cache_root=str(out / "cache"),
    )
    log_path = out / "logs" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    before = set((out / "root").glob("*"))
    failed = failure_file(out)
    names = display_names(pipeline_func)
    with captured(log_path, echo=not quiet, failure_file=failed, names=names) as task_log, warnings.catch_warnings():
        # kfp.local warns on every task that the cluster's image and resource requests do not apply locally.
        warnings.filterwarnings("ignore", message=r".*(have no effect in the current local runner|non-Python base)")
        try:
            pipeline_func(**params)
        except RuntimeError as e:
            raise RuntimeError(f"{task_log.failure(e)}\n(the whole log: {_short(log_path)})") from e
    (run_root,) = set((out / "root").glob("*")) - before  # this run's folder: kfp.local names it by the time
    register = next(run_root.rglob("register"))
    record = register / "record"
    return {
        "metrics": EvalReport.read(record),
        "registration": Registration.read(record),
        "record": record,
        "summary": register / "summary",
        "data_uri": params["data_uri"],
        "log": log_path,
    }


def failure_file(out: Path) -> Path:
    """Where a local run into ``out`` writes the task that failed, for its exit task (the DAG names it to it)."""
    return out / "logs" / FAILED_TASK_FILE


def print_summary(result: dict, tracking_uri: str) -> None:
    """The table, then where everything is: what a person reads after ``pipeline.py run``."""
    from clipcite.evaluation.report import baseline_lines, markdown

    metrics, config, registration = result["metrics"], result["config"], result["registration"]
    title = (  # the registered model's method and alpha: the winner when several methods ran
        f"clipcite: {metrics.method} (alpha={metrics.alpha}), {config.splits.shots} shots, "
        f"seed {config.seed}, {config.splits.protocol}, data {_short(result['data_uri'])}"
    )
    print(markdown(metrics, list(metrics.models), title=title))
    for line in baseline_lines(metrics):
        print(line)
    if registration.selection is not None:
        print(selection_line(registration.selection))
    print(f"registration record: {_short(result['record'])}\nreport: {_short(result['summary'])}")
    registry = result["registration"].registry
    if registry:
        print(f"registered {registry.name} v{registry.version}: {registry.decision} ({registry.reason})")
    print(f"log: {_short(result['log'])}")
    if tracking_uri.startswith("sqlite:"):
        mlflow_cli = _short(Path(sys.prefix) / "bin" / "mlflow")
        print(f"MLflow UI: {mlflow_cli} ui --backend-store-uri {tracking_uri}  (then open http://127.0.0.1:5000)")
    elif tracking_uri.lower() not in ("off", "none", "disabled", "false"):
        print(f"MLflow: {tracking_uri}")


def selection_line(selection: Selection) -> str:
    """Which candidate won on validation, and by how much: ``selected linear_probe on validation (top-1 45.83; cite
    33.33)``, in the metric the selection compared (selection.metric)."""
    others = "; ".join(f"{r.method} {r.score:.2f}" for r in selection.candidates if not r.selected)
    (won,) = [r for r in selection.candidates if r.selected]
    metric = METRIC_NAMES[won.metric]
    return f"selected {won.method} on validation ({metric} {won.score:.2f}; {others})"


def _outcome(status: str) -> str:
    return "done" if status == "SUCCESS" else "failed"


def _short(path: str | Path) -> str:
    """A local path relative to the working directory when it is below it (what a person would type)."""
    with contextlib.suppress(ValueError):
        return str(Path(os.path.abspath(path)).relative_to(Path.cwd()))
    return str(path)
