"""``pipeline.py run``'s output (clipcite/pipeline/local_run.py): kfp.local's whole log kept in a file, one line per
task on the terminal (with its domain for the loop's evaluate tasks), the failed task's error named, and ``print`` put
back after overlapping tasks."""

import io

from clipcite.pipeline import local_run

CYAN, GREEN, RED, RESET = "\x1b[96m", "\x1b[92m", "\x1b[91m", "\x1b[0m"


def kfp_output(task: str, body: list[str], status: str) -> str:
    """What kfp.local prints for one task (its format as of kfp 2.17, colours included)."""
    lines = [f"05:01:35.001 - INFO - Executing task {CYAN}'{task}'{RESET}", "05:01:35.002 - INFO - Streamed logs:", ""]
    lines += [f"    {line}" for line in body]
    colour = GREEN if status == "SUCCESS" else RED
    lines.append(f"05:01:54.100 - INFO - Task {CYAN}'{task}'{RESET} finished with status {colour}{status}{RESET}")
    return "\n".join(lines) + "\n"


def test_the_quiet_log_keeps_everything_prints_a_line_per_task_and_names_the_failure(tmp_path):
    terminal = io.StringIO()
    task_log = local_run.TaskLog(tmp_path / "run.log", terminal, echo=False)
    task_log.write(kfp_output("snapshot", ["[KFP Executor] Looking for component `snapshot`"], "SUCCESS"))
    task_log.write("05:01:55.000 - INFO - Task sample-splits cache hit (key=abc123); skipping execution.\n")
    traceback = [
        "Traceback (most recent call last):",
        '  File "/work/main/clipcite/models.py", line 80, in resolve_checkpoint',
        "    raise FileNotFoundError(f'{path}: checkpoint file not found')",
        "FileNotFoundError: /tmp/w.safetensors: checkpoint file not found (model.pretrained='/tmp/w.safetensors')",
    ]
    for chunk in kfp_output("cache-teacher", traceback, "FAILURE").split("\n"):  # written in pieces, as printed
        task_log.write(chunk + "\n")
    task_log.close()
    progress = terminal.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in progress] == [
        "snapshot ...",
        "snapshot: done",
        "sample-splits: reused from the cache",
        "cache-teacher ...",
        "cache-teacher: failed",
    ]
    assert "Looking for component" in (tmp_path / "run.log").read_text()  # the whole log is kept
    error = RuntimeError(f"Pipeline 'clipcite' finished with status FAILURE. Inner task failed: {CYAN}'cache-teacher'")
    assert task_log.failure(error) == (
        "task 'cache-teacher' failed: FileNotFoundError: /tmp/w.safetensors: checkpoint file not found "
        "(model.pretrained='/tmp/w.safetensors')"
    )


def test_the_quiet_log_names_the_domain_of_each_evaluate_task(tmp_path):
    """The ParallelFor's iterations are all called 'evaluate' and run at once; each line says its domain."""
    terminal = io.StringIO()
    task_log = local_run.TaskLog(tmp_path / "run.log", terminal, echo=False)
    start = "05:01:35.001 - INFO - Executing task {c}'evaluate'{r}\n05:01:35.002 - INFO - Streamed logs:\n\n"
    task_log.write(start.format(c=CYAN, r=RESET) * 2)  # both iterations start before either prints its input
    for domain in ("sketch", "photo"):
        task_log.write(f'            "parameterValues": {{\n                "domain": "{domain}",\n')
    for domain in ("photo", "sketch"):
        task_log.write(
            f"05:01:54.100 - INFO - Task {CYAN}'evaluate'{RESET} finished with status {GREEN}SUCCESS{RESET}\n"
        )
        task_log.write(
            f"    report: Artifact( name='report',\n                      metadata={{'domain': '{domain}'}} )\n"
        )
    task_log.close()
    assert [line.split("] ", 1)[1] for line in terminal.getvalue().splitlines()] == [
        "evaluate sketch ...",
        "evaluate photo ...",
        "evaluate photo: done",
        "evaluate sketch: done",
    ]


def test_overlapping_parallel_tasks_do_not_leave_print_indented_after_the_run(tmp_path, capsys):
    """kfp.local swaps ``builtins.print`` for an indenting one while a task runs; two evaluate iterations that overlap
    (start A, start B, end A, end B) leave B's "original", A's indenting print, in place. CI printed the summary
    with four spaces before it that way; ``captured`` puts the plain print back."""
    from kfp.local import logging_utils

    with local_run.captured(tmp_path / "run.log", echo=False):
        first, second = logging_utils.indented_print(), logging_utils.indented_print()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        second.__exit__(None, None, None)
    print("# clipcite: the summary")
    assert capsys.readouterr().out == "# clipcite: the summary\n"


def test_each_candidates_task_line_names_its_method(tmp_path):
    """With several methods kfp.local numbers the second finetune and validate tasks; the lines, the failed task and
    the exit task's file use the DAG's names, which are the step runs' names in MLflow."""
    import dataclasses

    from clipcite.pipeline.dag import build_pipeline
    from clipcite.pipeline.settings import ClusterSettings

    settings = dataclasses.replace(ClusterSettings.from_env(), methods=("cite", "linear_probe"))
    names = local_run.display_names(build_pipeline(settings))
    assert names["finetune"] == "finetune-cite" and names["finetune-2"] == "finetune-linear_probe"
    assert names["validate"] == "validate-cite" and names["validate-2"] == "validate-linear_probe"
    assert "evaluate" not in names and "register" not in names  # one task each: kfp.local's name is the DAG's
    terminal = io.StringIO()
    failure = tmp_path / "failed.json"
    task_log = local_run.TaskLog(tmp_path / "run.log", terminal, echo=False, failure_file=failure, names=names)
    task_log.write(kfp_output("finetune", [], "SUCCESS"))
    task_log.write(kfp_output("finetune-2", ["ValueError: bad"], "FAILURE"))
    task_log.close()
    progress = [line.split("] ", 1)[1] for line in terminal.getvalue().splitlines()]
    assert progress == [
        "finetune-cite ...",
        "finetune-cite: done",
        "finetune-linear_probe ...",
        "finetune-linear_probe: failed",
    ]
    assert task_log.failed_task == "finetune-linear_probe" and "finetune-linear_probe" in failure.read_text()
    error = RuntimeError(f"Pipeline 'clipcite' finished with status FAILURE. Inner task failed: {CYAN}'finetune-2'")
    assert task_log.failure(error) == "task 'finetune-linear_probe' failed: ValueError: bad"


def test_the_summary_heading_names_the_registered_winner_and_the_selection(tmp_path, capsys):
    from clipcite.config import load_config
    from clipcite.records import Registration, Selection, SelectionRow
    from tests.support.records import report

    rows = (
        SelectionRow("linear_probe", 45.83, 24, 1536, 3.0, 6144, True),
        SelectionRow("cite", 33.33, 24, 10**6, 9.0, 4 * 10**6, False),
    )
    selection = Selection("rule", 0.1, "linear_probe", rows)
    mean = {"finetuned": {"top1": 40.9}}
    metrics = report(method="linear_probe", alpha=1.0, domains={"default": mean}, mean=mean, models=("finetuned",))
    registration = Registration("m", "e", "model", "id", ("a",), "linear_probe", 1.0, {}, mean, selection=selection)
    config = load_config("default", ["train.method=cite"])  # the shared config names the first method
    result = {"metrics": metrics, "config": config, "registration": registration, "data_uri": "photos"}
    result |= {"record": tmp_path / "record", "summary": tmp_path / "summary", "log": tmp_path / "log"}
    local_run.print_summary(result, "off")
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("# clipcite: linear_probe (alpha=1.0), ")
    assert "selected linear_probe on validation (top-1 45.83; cite 33.33)" in printed
