"""Step 5, register: merge the per-domain evaluations, register the model, and let the gate decide on ``champion``.

Files first (the pipeline keeps them as artifacts): ``record`` gets ``registration.json`` (the model's location and
identity, the merged metrics, the registry's answer) and ``metrics.json``, ``summary`` a Markdown report. With
tracking on, the model is logged as an MLflow pyfunc in a nested run, registered as a new version of
``registered_model_name`` (once per pipeline run: a rerun finds its version), and the promotion gate
(:mod:`clipcite.tracking.promotion_gate`) moves the ``champion`` alias to it or tags it ``challenger`` with the reason.
The version belongs to the pipeline's run (the run page lists it); its description becomes its model card and the
registered model's says how versions are promoted (:mod:`clipcite.tracking.model_card`). The pipeline's run gets the
mean metrics, every domain's in one table (``metrics_table.json``), the card, the per-domain chart and confusion
matrices as MLflow images, and a line in its Description naming the version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from clipcite import storage
from clipcite.config import Config, GateConfig, config_from_yaml
from clipcite.evaluation.metrics import SUMMARY_METRICS, summarise
from clipcite.evaluation.report import baseline_lines, markdown, plot_domains, plot_selection
from clipcite.evaluation.selection import CANDIDATE_PREFIX, candidate_model
from clipcite.logs import setup_logging
from clipcite.records import EvalReport, ModelMeta, Registration, RegistryEntry, Selection, step_name
from clipcite.steps.command_line import base_parser, config_from
from clipcite.tracking import registry, runs, served_model
from clipcite.tracking.default_uri import HELP as TRACKING_HELP
from clipcite.tracking.default_uri import default_tracking_uri
from clipcite.tracking.model_card import family_description, selection_section, version_card
from clipcite.tracking.promotion_gate import decide_promotion, primary_metric
from clipcite.tracking.run_card import with_registration

log = logging.getLogger(__name__)
MODELS = ("zeroshot", "finetuned", "champion")
METRICS_TABLE = "metrics_table.json"  # on the pipeline's run: every domain x model, where the metrics are the means
NOTE = "mlflow.note.content"  # a run's Description in the MLflow UI (snapshot writes it; register adds its version)


def merge_reports(report_uris: list[str]) -> EvalReport:
    """Join evaluate outputs that each cover some domains into one report (domains, mean, sets, models)."""
    bodies = [EvalReport.read(uri) for uri in report_uris]
    if not bodies:
        raise ValueError("no evaluation reports to register")
    sets: dict = {}
    for body in bodies:
        overlap = set(sets) & set(body.sets)
        if overlap:
            raise ValueError(f"eval set(s) {sorted(overlap)} appear in more than one report")
        sets.update(body.sets)
    champions = {b.champion_version for b in bodies}
    if len(champions) > 1:  # the alias moved while the domains were being evaluated
        raise ValueError(f"the evaluations compared against different champion versions {sorted(map(str, champions))}")
    evaluated = [m for m in MODELS if all(m in entry for entry in sets.values())]
    losers = sorted({m for entry in sets.values() for m in entry if m.startswith(CANDIDATE_PREFIX)})
    partial = [m for m in losers if not all(m in entry for entry in sets.values())]
    if partial:  # a domain's evaluate that was not wired the candidates: their mean would cover other domains
        log.warning("%s not scored on every eval set: left out of the record", ", ".join(partial))
    models = evaluated + [m for m in losers if m not in partial]
    first = bodies[0]
    summary = summarise(sets, models, first.train_domains, first.mean_over)
    return dataclasses.replace(
        first,
        domains=summary["domains"],
        mean=summary["mean"],
        mean_domains=tuple(summary["mean_domains"]),
        source_domains=tuple(summary["source_domains"]),
        sets=sets,
        zeroshot_cached=(),
        models=tuple(models),
    )


def run(
    model_uri: str,
    report_uris: list[str],
    record_uri: str,
    summary_uri: str,
    config: Config,
    *,
    registered_model_name: str,
    experiment_name: str = "",
    tracking_uri: str | None = None,
    mlflow_run_id: str = "",
    model_ref: str = "",
    selection_uri: str = "",
    close_run: bool = False,
) -> Registration:
    """Merge the evaluations, record them, and with tracking register the model and apply the gate. The model is
    read at ``model_uri``; ``model_ref`` is its address to record (KFP's ``.uri``, ``s3://...``) when that is a
    pod-local path (its ``.path``, ``/s3/...``, which is gone with the pod). ``selection_uri``: the select step's
    output when the model won among candidate methods ("" = one method): its table goes into the record, the
    summary and the model card. ``close_run``: end the pipeline's MLflow run here, FINISHED (FAILED when registering
    fails), for a run that has no exit handler (``clipcite register`` by hand); a pipeline's exit step closes it."""
    body = merge_reports(report_uris)
    selection = Selection.read(selection_uri) if selection_uri else None
    if selection:
        selection = with_test_numbers(selection, body, config.gate)
    meta = ModelMeta.read(model_uri)  # not the weights
    if tracking_uri is not None:
        tracking_uri = runs.resolve_uri(tracking_uri)  # "off" from a pipeline parameter: files only
    entry = None
    if tracking_uri is not None and mlflow_run_id:
        try:
            entry = _register(
                model_uri,
                meta,
                body,
                config,
                registered_model_name,
                tracking_uri,
                mlflow_run_id,
                report_uris,
                selection,
            )
        except Exception:
            if close_run:
                with contextlib.suppress(Exception):  # MLflow may be the thing that failed
                    runs.finish_pipeline_run(tracking_uri, mlflow_run_id, "FAILED")
            raise
        if close_run:
            runs.finish_pipeline_run(tracking_uri, mlflow_run_id)
    record = Registration(
        registered_model_name=registered_model_name,
        experiment_name=experiment_name,
        model_uri=model_ref or model_uri,
        base_identity=meta.base_identity,
        classnames=meta.classnames,
        method=meta.method,
        alpha=meta.alpha,
        domains=body.domains,
        mean=body.mean,
        selection=selection,
        registry=entry,
    )
    with storage.staged_dir(record_uri) as tmp:
        record.write(tmp)
        body.write(tmp)
    storage.write_text(summary_uri, summary_text(registered_model_name, body, selection, entry))
    if entry is not None:
        log.info("recorded %s; registered %s v%s", record_uri, registered_model_name, entry.version)
    else:
        why = "tracking is off" if tracking_uri is None else "no pipeline MLflow run id"
        log.info("recorded %s (files only): nothing registered in MLflow, %s", record_uri, why)
    return record


def summary_text(name: str, body: EvalReport, selection: Selection | None, entry: RegistryEntry | None) -> str:
    """The run's Markdown summary: the merged table, the selection and what the registry did."""
    text = markdown(body, list(body.models), title=f"{name}: {body.method} (alpha={body.alpha}, seed={body.seed})")
    text += "".join(f"\n{line}\n" for line in baseline_lines(body))
    if selection:
        text += "\n" + "\n".join(selection_section(selection))
    if entry is not None:
        text += f"\nRegistered as version {entry.version}: {entry.decision} ({entry.reason}).\n"
    return text


def _register(
    model_uri: str,
    meta: ModelMeta,
    body: EvalReport,
    config: Config,
    name: str,
    uri: str,
    pipeline_run: str,
    report_uris: list[str],
    selection: Selection | None = None,
) -> RegistryEntry:
    """Log + register the model (once per pipeline run), apply the gate (``config.gate``), describe the version
    (its model card) and the registered model, and put the plots on the pipeline's run. Returns what the registry
    did."""
    with runs.step_run(uri, pipeline_run, "register", system_metrics=False) as step:
        client = step.client
        version = registry.find_version(client, name, pipeline_run)
        rerun = version is not None
        if rerun:
            log.info(
                "pipeline run %s already registered %s v%s; not registering again", pipeline_run, name, version.version
            )
        else:
            with storage.local_dir(model_uri) as folder:
                logged = served_model.log_classifier(step, folder, example_images=_example_images())
            step.link_model(logged)
            tags = _version_tags(meta, config)
            # The version's run is the pipeline's: its page lists the registered versions whose run_id is the run.
            version = registry.register_version(
                client, name, logged, run_id=pipeline_run, pipeline_run_id=pipeline_run, tags=tags
            )
        number = int(version.version)
        current = registry.champion(client, name)
        holder = int(current.version) if current is not None else None
        evaluated = body.champion_version
        decision = decide_promotion(body, config.gate, version=number, holder=holder).as_dict()
        role = "champion" if decision["promote"] else "challenger"
        registry.set_version_tags(client, name, number, {"gate.decision": role, "gate.reason": decision["reason"]})
        if decision["promote"]:
            registry.set_champion(client, name, number)
        log.info("%s v%s: %s (%s)", name, number, role, decision["reason"])
        digest = client.get_run(pipeline_run).data.params.get("data.sources_digest", "")
        card = version_card(
            name=name,
            version=number,
            meta=meta,
            body=body,
            decision={"role": role, "reason": decision["reason"]},
            code_version=runs.code_version(),
            data_digest=digest,
            selection=selection,
        )
        registry.describe_version(client, name, number, card)
        registry.describe_model(client, name, family_description(name, dataclasses.asdict(config.gate)))
        for on_parent in (False, True):
            step.log_text(card, "model_card.md", parent=on_parent)
        step.log_metrics({"mean": body.mean}, parent=True, digits=runs.METRIC_DIGITS)
        step.log_table(metrics_table(body), METRICS_TABLE, parent=True)
        if not rerun:  # a rerun's run already holds them
            _log_plots(step, body, report_uris)
            if selection and selection.test_key:
                _log_test_numbers(client, pipeline_run, selection)
                with tempfile.TemporaryDirectory() as tmp:
                    plot_selection(selection, Path(tmp) / "selection.png")
                    step.log_image(Path(tmp) / "selection.png", "selection-test", parent=True)
        note = client.get_run(pipeline_run).data.tags.get(NOTE, "")
        tags = {"registered_version": number, "gate.decision": role}
        tags[NOTE] = with_registration(note, name, number, role, decision["reason"])
        step.set_tags(tags, parent=True)
        step.log_text(json.dumps(decision, indent=2), "gate.json")
    return RegistryEntry(name, number, role, decision["reason"], decision, pipeline_run, evaluated)


def with_test_numbers(selection: Selection, body: EvalReport, gate: GateConfig) -> Selection:
    """The select step's table with each candidate's test number, the gate's metric where the gate reads it (one
    domain, or the eval sets' mean): the selected one's is ``finetuned``'s, the others' were scored beside it by
    evaluate. Added after the choice, for the record: the choice was made on validation alone. Without any other
    candidate's numbers (an evaluate not wired them) the table stays as select wrote it."""
    metric = primary_metric(gate, body)
    source = body.domains.get(gate.domain, {}) if gate.domain else body.mean
    rows = []
    for row in selection.candidates:
        model = "finetuned" if row.selected else candidate_model(row.method)
        rows.append(dataclasses.replace(row, test=source.get(model, {}).get(metric)))
    if not any(r.test is not None for r in rows if not r.selected):
        return selection
    where = gate.domain or f"mean of {', '.join(body.mean_domains or body.domains)}"
    return dataclasses.replace(
        selection, candidates=tuple(rows), test_metric=f"{metric} ({where})", test_key=f"test_{metric}"
    )


def _log_test_numbers(client, pipeline_run: str, selection: Selection) -> None:
    """Each candidate's test number on its ``validate-<method>`` run (the newest finished one, where a retry left
    several), beside its validation score, so MLflow's run comparison of those runs charts validation against test."""
    experiment = client.get_run(pipeline_run).info.experiment_id
    children = client.search_runs(
        [experiment],
        filter_string=f"tags.`mlflow.parentRunId` = '{pipeline_run}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    by_step: dict[str, str] = {}
    for run in children:
        by_step.setdefault(run.data.tags.get(runs.STEP_TAG, ""), run.info.run_id)
    for row in selection.candidates:
        run_id = by_step.get(step_name("validate", row.method))
        if run_id and row.test is not None:
            client.log_metric(run_id, selection.test_key, round(float(row.test), runs.METRIC_DIGITS))


def metrics_table(body: EvalReport) -> dict[str, list]:
    """Every domain's metrics of every model, and their mean, as one table (columns: domain, model, whether the
    domain was trained on, then top1/base/new/hm as measured), rounded as the logged metrics are."""
    keys = [k for k in SUMMARY_METRICS if any(k in e[m] for e in body.domains.values() for m in e)]
    trained = set(body.source_domains)
    columns: dict[str, list] = {"domain": [], "model": [], "trained_on": [], **{k: [] for k in keys}}
    mean_name = "mean of " + ", ".join(body.mean_domains or body.domains)
    entries = [*body.domains.items(), (mean_name, body.mean)]
    for domain, entry in entries:
        for model in body.models:
            columns["domain"].append(domain)
            columns["model"].append(model)
            columns["trained_on"].append(domain in trained)
            for key in keys:
                value = entry.get(model, {}).get(key)
                columns[key].append(None if value is None else round(float(value), runs.METRIC_DIGITS))
    return columns


def _version_tags(meta: ModelMeta, config: Config) -> dict:
    """Tags to filter versions by (the gate adds ``gate.decision``/``gate.reason``); metrics live in the model card
    and the pipeline's run, not here, so the registry's versions table stays readable."""
    return {
        "dataset": meta.dataset,
        "shots": config.splits.shots,
        "protocol": config.splits.protocol,
        "method": meta.method,
        "seed": meta.seed,
        "base_model": meta.base_identity,
    }


def _log_plots(step: runs.StepRun, body: EvalReport, report_uris: list[str]) -> None:
    """On the pipeline's run, as MLflow images with the same keys in every run (``domains``: every domain's bars,
    which the per-domain evaluate tasks cannot draw alone; ``confusion-<eval set>``: the evaluate step's matrices),
    so the UI previews them and its run comparison lines them up."""
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "domains.png"
        plot_domains(body, list(body.models), chart)
        step.log_image(chart, "domains", parent=True)
    for uri in report_uris:
        with storage.local_dir(uri) as folder:
            for png in sorted(Path(folder).glob("confusion_*.png")):
                step.log_image(png, f"confusion-{png.stem.removeprefix('confusion_')}", parent=True)


def _example_images() -> list[bytes]:
    """Two small PNGs for the model's input example (documents the input format; not a test set)."""
    images = []
    for colour in ((200, 40, 40), (40, 80, 220)):
        buffer = io.BytesIO()
        Image.fromarray(np.full((32, 32, 3), colour, dtype=np.uint8)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def _trained_config(model_uri: str) -> Config:
    """The config a saved model was trained with (its clipcite.json): the CLI's default for the gate's rules."""
    meta = ModelMeta.read(model_uri)
    return config_from_yaml(json.dumps(meta.config), where=f"{storage.join(model_uri, ModelMeta.FILE)}: config")


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        "register",
        "Merge evaluations and record the model with them. The gate's rules come from --config/--set, else from the "
        "config the model was trained with (its clipcite.json).",
    )
    parser.add_argument("--model", required=True, help="finetune's output folder (or s3:// prefix)")
    parser.add_argument("--report", action="append", required=True, help="evaluate output (repeatable)")
    parser.add_argument("--out", required=True, help="folder for registration.json and metrics.json")
    parser.add_argument("--summary", required=True, help="Markdown file to write")
    parser.add_argument("--name", default="clipcite", help="registered model name")
    parser.add_argument(
        "--tracking-uri",
        default="",
        help=f"{TRACKING_HELP}, with --mlflow-run-id; without one, or 'off': files only, nothing registered",
    )
    parser.add_argument("--mlflow-run-id", default="", help="the pipeline's MLflow run (from snapshot): register")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.mlflow_run_id:
        tracking_uri = runs.resolve_uri(default_tracking_uri(args.tracking_uri))
    else:
        tracking_uri = runs.resolve_uri(args.tracking_uri or "off")
        if tracking_uri is not None:
            parser.error("registering with --tracking-uri needs --mlflow-run-id: the run `clipcite snapshot` opened")
    config = config_from(args) if args.config or args.overrides else _trained_config(args.model)
    run(
        args.model,
        args.report,
        args.out,
        args.summary,
        config,
        registered_model_name=args.name,
        tracking_uri=tracking_uri,
        mlflow_run_id=args.mlflow_run_id,
        close_run=True,  # no exit handler runs after a command
    )
    body = EvalReport.read(args.out)
    print(markdown(body, list(body.models)))
    if not args.mlflow_run_id:
        log.info("to register the model, pass --mlflow-run-id (the run `clipcite snapshot` printed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
