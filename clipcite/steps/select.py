"""Step select: pick the candidate method to test and register, by :func:`clipcite.evaluation.selection.pick`.

Inputs: each candidate's model folder and ``validate`` output (``validation.json``), nothing else: no split, no eval
set, no test label. Outputs: ``model``, a copy of the winner's folder (what evaluate and register then read, as for a
single method), and ``choice``: ``selection.json`` (the rule, the winner, one row per candidate) and
``selection.png``. With tracking, the pipeline's run gets the table (``selection_table.json``), the chart and a
``selection.winner`` tag; each candidate's own numbers are in its ``validate-<method>`` run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys

from clipcite import storage
from clipcite.evaluation.report import plot_selection
from clipcite.evaluation.selection import TIE_POINTS, pick, rule, table
from clipcite.logs import setup_logging
from clipcite.records import Candidate, Selection
from clipcite.tracking import runs

log = logging.getLogger(__name__)
SELECTION_TABLE = "selection_table.json"  # on the pipeline's run


def run(
    candidates: dict[str, tuple[str, str]],
    model_out: str,
    choice_out: str,
    *,
    tracking_uri: str | None = None,
    mlflow_run_id: str = "",
    tie_points: float = TIE_POINTS,
) -> Selection:
    """``candidates``: method -> (model folder, validate output folder). Picks, copies the winner's model folder to
    ``model_out`` and writes the choice to ``choice_out``; returns the choice."""
    scored = [_candidate(method, validation) for method, (_, validation) in candidates.items()]
    winner = pick(scored, tie_points)
    choice = Selection(rule(tie_points, winner.metric), tie_points, winner.method, table(scored, winner))
    with storage.local_dir(candidates[winner.method][0]) as folder, storage.staged_dir(model_out) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
    with storage.staged_dir(choice_out) as tmp:
        choice.write(tmp)
        plot_selection(choice, tmp / "selection.png")
        with runs.step_run(tracking_uri, mlflow_run_id, "select", system_metrics=False) as step:
            step.log_text(json.dumps(choice.to_dict(), indent=2), Selection.FILE, parent=True)
            step.log_table(choice.columns(), SELECTION_TABLE, parent=True)
            step.log_image(tmp / "selection.png", "selection", parent=True)
            step.set_tags({"selection.winner": winner.method, "selection.rule": choice.rule}, parent=True)
    log.info("selected %s of %s (%s)", winner.method, sorted(candidates), choice.rule)
    return choice


def _candidate(method: str, validation_uri: str) -> Candidate:
    candidate = Candidate.read(validation_uri)
    if candidate.method != method:
        raise ValueError(f"{validation_uri}: scores method {candidate.method!r}, wired as the {method!r} candidate")
    return candidate


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="clipcite select", description="Pick one of several candidate models.")
    parser.add_argument(
        "--candidate",
        action="append",
        required=True,
        metavar="MODEL_DIR=VALIDATION_DIR",
        help="a finetune output and its validate output (repeatable)",
    )
    parser.add_argument("--model-out", required=True, help="where the winner's model folder is copied")
    parser.add_argument("--out", required=True, help="folder for selection.json and selection.png")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    candidates = {}
    for item in args.candidate:
        model, sep, validation = item.partition("=")
        if not sep:
            parser.error(f"--candidate {item!r}: expected MODEL_DIR=VALIDATION_DIR")
        candidates[Candidate.read(validation).method] = (model, validation)
    print(json.dumps(dataclasses.asdict(run(candidates, args.model_out, args.out)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
