"""Step 4, evaluate: the fine-tuned model (and the zero-shot model beside it) on every eval set.

Output folder: ``metrics.json`` (per set, per domain, mean over domains), ``confusion/<set>.json``,
``report.md`` and PNG plots (``domains.png``: zero-shot vs fine-tuned per domain; ``confusion_<set>.png``).
``domains`` restricts the run to some domains, which is how the pipeline fans out one task per domain.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from clipcite import storage
from clipcite.caches.baseline_cache import baseline_key, read_baseline, write_baseline
from clipcite.config import Config
from clipcite.evaluation.metrics import summarise
from clipcite.evaluation.predict import predict_models, set_metrics
from clipcite.evaluation.report import markdown, plot_confusion, plot_domains
from clipcite.evaluation.selection import candidate_model
from clipcite.logs import setup_logging
from clipcite.model.clip import LoadedModel, load_model, load_saved, resolve_device
from clipcite.model.precision import resolve_precision
from clipcite.records import META_FILE, EvalReport, EvalSet, ModelMeta, RecordError, SplitsManifest
from clipcite.steps.artifact_io import class_prompts, read_split
from clipcite.steps.command_line import base_parser, config_from
from clipcite.steps.retry import with_retries
from clipcite.tracking import registry, runs
from clipcite.training import distributed

log = logging.getLogger(__name__)


@distributed.relaunch_in_ranks()
def run(
    model_uri: str,
    splits_uri: str,
    out_uri: str,
    config: Config,
    domains: tuple[str, ...] = (),
    *,
    tracking_uri: str | None = None,
    mlflow_run_id: str = "",
    registered_model_name: str = "",
    baseline_cache: str = "",
    model_ref: str = "",
    splits_ref: str = "",
    attempts: int = 1,
    candidates: dict[str, str] | None = None,
) -> EvalReport:
    """Evaluate on the eval sets of ``domains`` (all when empty). With tracking, the registered model's current
    ``champion`` is evaluated beside the new one (for the promotion gate) and everything is logged to a nested run.
    ``CLIPCITE_NPROC_PER_NODE`` > 1 shares each set's images out over that many torchrun ranks on this machine
    (rank 0 logs and writes the same metrics as one process). ``baseline_cache`` (a folder or s3:// prefix; ""
    = off) keeps the zero-shot model's per-set metrics across runs (``clipcite.caches.baseline_cache``): a rerun that
    changes only the training evaluates just the new model (and the champion). ``model_ref`` and ``splits_ref`` are the
    artifacts' addresses to record (KFP's ``.uri``, e.g. ``s3://...``) where the folders read are pod-local paths
    (its ``.path``, ``/s3/...``); by default the paths read are recorded. ``attempts`` > 1 retries the work after
    a transient failure (:mod:`clipcite.steps.retry`: KFP ignores a retry policy inside a ParallelFor), in one process.
    ``candidates`` ({method: model folder}, several methods in one run): every candidate but the selected one is
    scored beside it as ``candidate-<method>``, in the same pass over the images, so the record and the model card
    hold every candidate's test numbers; the selection was made before, on validation, and never sees them.
    """
    if not storage.exists(storage.join(model_uri, META_FILE)):
        raise FileNotFoundError(
            f"{model_uri}: no fine-tuned model there ({META_FILE} missing); run `clipcite finetune --out {model_uri}` "
            "first, or pass the folder finetune wrote"
        )
    name = "evaluate" + "".join(f"-{d}" for d in domains)
    device = resolve_device(config.device)
    with distributed.process_group(device):
        run_id = mlflow_run_id if distributed.is_main() else ""  # rank 0 alone logs to MLflow
        with runs.step_run(tracking_uri, run_id, name) as step, tempfile.TemporaryDirectory() as tmp:

            def work() -> EvalReport:
                champion = None
                with_champion = step.enabled and registered_model_name and config.gate.evaluate_champion
                if distributed.broadcast(bool(with_champion)):
                    champion = _champion(step.client, registered_model_name, Path(tmp), device)
                return _run(
                    model_uri,
                    splits_uri,
                    out_uri,
                    config,
                    step,
                    domains=domains,
                    champion=champion,
                    baseline_cache=baseline_cache,
                    model_ref=model_ref or model_uri,
                    splits_ref=splits_ref or splits_uri,
                    candidates=candidates or {},
                )

            tries = attempts if distributed.world_size() == 1 else 1  # ranks must fail and retry together
            body = with_retries(work, attempts=tries, what=name)
        distributed.barrier()  # no rank returns before rank 0 has written the metrics
    return body


def _champion(client, name: str, tmp: Path, device: str) -> tuple[int, LoadedModel] | None:
    """(version, loaded model) of the registered model's champion, or None when there is none yet. Under ranks,
    rank 0 asks the registry and downloads; the others load its folder (the ranks share one machine)."""
    found = None
    if distributed.is_main():
        version = registry.champion(client, name)
        if version is not None:
            found = int(version.version), str(registry.download_model_dir(client, name, version.version, tmp))
    found = distributed.broadcast(found)
    if found is None:
        log.info("%s has no champion yet", name)
        return None
    try:
        loaded = load_saved(Path(found[1]), device=device)[0]
    except RecordError as e:  # a champion saved by an older clipcite: this run registers, the gate cannot promote
        log.warning(
            "%s v%s (the champion) is not comparable: %s; not evaluated, so the gate keeps it (move the alias by "
            "hand: clipcite champion %s --promote <version>)",
            name,
            found[0],
            e,
            name,
        )
        return None
    log.info("evaluating champion %s v%s beside the new model", name, found[0])
    return found[0], loaded


@dataclass
class _Evaluation:
    """What every eval set of one evaluate run is scored with: the models by name (the zero-shot model is loaded
    only for a set whose baseline is not in ``baseline_cache``) and what the baseline's key needs. The models a set
    needs score it together: each image is decoded once per eval view
    (:func:`clipcite.evaluation.predict.predict_models`)."""

    config: Config
    device: str
    manifest: SplitsManifest
    meta: ModelMeta  # the fine-tuned model's
    model_uri: str
    models: dict[str, LoadedModel | None]  # None: the zero-shot model, not loaded yet
    baseline_cache: str

    def score_set(self, spec_set: EvalSet, set_uri: str, set_ref: str) -> tuple[dict, bool]:
        """The set's entry (its description and one metrics dict per model) and whether the zero-shot metrics came
        from the baseline cache; ``set_ref`` is the set's address to record (``set_uri`` is where it is read)."""
        rows, classes = read_split(set_uri)
        template, prompts = class_prompts(classes, self.config)  # each set's own template unless model.template
        entry = {"domain": spec_set.domain, "subset": spec_set.subset, "template": template}
        entry["classnames"] = list(classes.names)
        key = self._baseline_key(spec_set.name, prompts) if "zeroshot" in self.models else ""
        metrics: dict[str, dict] = {}
        if key and (found := read_baseline(self.baseline_cache, key)) is not None:
            metrics["zeroshot"] = found
        cached = bool(metrics)
        if pending := [name for name in self.models if name not in metrics]:  # one pass over the images for them all
            preds, target = predict_models(
                {name: self._model(name) for name in pending},
                rows,
                prompts,
                batch_size=self.config.eval.batch_size,
                device=self.device,
                num_workers=self.config.eval.num_workers,
                precision=self.config.train.precision,
                source=f"{set_uri}: ",
            )
            metrics |= {name: set_metrics(preds[name], target, list(classes.names)) for name in pending}
        if key and not cached and distributed.is_main():
            write_baseline(self.baseline_cache, key, metrics["zeroshot"], {"set": spec_set.name, "uri": set_ref})
        entry |= {name: metrics[name] for name in self.models}
        if cached:
            log.info("%s: zero-shot baseline read from %s (not evaluated again)", spec_set.name, self.baseline_cache)
        entry["rows"], entry["classes"] = len(rows), len(prompts)
        return entry, cached

    def _model(self, name: str) -> LoadedModel:
        loaded = self.models[name]
        if loaded is None:
            loaded = self.models[name] = _zeroshot_model(self.config, self.meta, self.model_uri, self.device)
        return loaded

    def _baseline_key(self, set_name: str, prompts: list[str]) -> str:
        """The zero-shot baseline's cache key for one eval set ("" when off, or when the splits predate the digests
        it needs)."""
        if not self.baseline_cache:
            return ""
        record = self.manifest.digest_of(f"eval/{set_name}")
        identity, digest = self.meta.base_identity, self.manifest.sources_digest
        precision = resolve_precision(self.device, self.config.train.precision)
        try:
            return baseline_key(identity, digest, set_name, record, prompts, precision)
        except ValueError as e:  # splits written before the digests existed: evaluate, do not cache
            log.warning("%s; not cached", e)
            return ""


def _run(
    model_uri: str,
    splits_uri: str,
    out_uri: str,
    config: Config,
    step: runs.StepRun,
    *,
    domains: tuple[str, ...],
    champion: tuple[int, LoadedModel] | None,
    baseline_cache: str,
    model_ref: str,
    splits_ref: str,
    candidates: dict[str, str],
) -> EvalReport:
    device = resolve_device(config.device)
    manifest = SplitsManifest.read(splits_uri)
    sets = manifest.eval_sets_of(domains, splits_uri)
    with storage.local_dir(model_uri) as folder:
        finetuned, meta = load_saved(folder, device=device)
    models: dict[str, LoadedModel | None] = {"zeroshot": None} if config.eval.zeroshot_baseline else {}
    models |= {"finetuned": finetuned, **({"champion": champion[1]} if champion else {})}
    for method, uri in sorted(candidates.items()):
        if method != meta.method:  # the selected candidate is the one evaluated as "finetuned"
            with storage.local_dir(uri) as folder:
                models[candidate_model(method)] = load_saved(folder, device=device)[0]
    evaluation = _Evaluation(config, device, manifest, meta, model_uri, models, baseline_cache)

    results: dict[str, dict] = {}
    baselines_cached: list[str] = []  # eval sets whose zero-shot metrics came from baseline_cache
    for spec_set in sets:
        set_uri, set_ref = (storage.join(root, "eval", spec_set.name) for root in (splits_uri, splits_ref))
        entry, cached = evaluation.score_set(spec_set, set_uri, set_ref)
        results[spec_set.name] = entry
        baselines_cached += [spec_set.name] if cached else []
        digest = manifest.digest_of(f"eval/{spec_set.name}")
        ids = digest.ids_sha256 if digest else ""
        rows, classes = entry.pop("rows"), entry.pop("classes")
        step.log_dataset(spec_set.name, set_ref, ids, "evaluation", rows=rows, classes=classes, parent=True)
        log.info("%s: %s", spec_set.name, {m: round(entry[m]["top1"], 2) for m in models})

    names = list(models)
    train_domains = manifest.train_domains
    summary = summarise(results, names, train_domains, config.eval.mean_over)
    body = EvalReport(
        model=model_ref,
        method=meta.method,
        alpha=meta.alpha,
        alpha_grid=meta.alpha_grid.alphas if meta.alpha_grid else None,
        seed=meta.seed,
        template=config.model.template,
        train_domains=tuple(train_domains),
        mean_over=config.eval.mean_over,
        champion_version=champion[0] if champion else None,
        zeroshot_cached=tuple(baselines_cached),
        domains=summary["domains"],
        mean=summary["mean"],
        mean_domains=tuple(summary["mean_domains"]),
        source_domains=tuple(summary["source_domains"]),
        sets={k: _without_confusion(v, names) for k, v in results.items()},
    )
    if not distributed.is_main():
        return body  # rank 0 writes and logs
    with storage.staged_dir(out_uri) as tmp:
        _write_outputs(tmp, body, results, names)
        step.log_artifacts(tmp)
    # This domain's metrics on the step's run; register puts every domain's in one table on the pipeline's run.
    step.log_metrics({"eval": body.domains}, digits=runs.METRIC_DIGITS)
    return body


def _without_confusion(entry: dict, names: list[str]) -> dict:
    """A set's entry as metrics.json keeps it (confusion matrices go to their own files)."""
    kept = {m: {x: y for x, y in entry[m].items() if x != "confusion"} for m in names}
    return {**kept, "domain": entry["domain"], "subset": entry["subset"], "template": entry["template"]}


def _write_outputs(folder: Path, body: EvalReport, results: dict, names: list[str]) -> None:
    body.write(folder)
    (folder / "report.md").write_text(
        markdown(body, names, title=f"Evaluation of {body.method} (alpha={body.alpha}, seed={body.seed})")
    )
    plot_domains(body, names, folder / "domains.png")
    (folder / "confusion").mkdir()
    for set_name, entry in results.items():
        matrices = {m: entry[m]["confusion"] for m in names}
        (folder / "confusion" / f"{set_name}.json").write_text(
            json.dumps({"classnames": entry["classnames"], **matrices})
        )
        plot_confusion(
            entry["finetuned"]["confusion"],
            entry["classnames"],
            f"{set_name} (fine-tuned)",
            folder / f"confusion_{set_name}.png",
        )


def _zeroshot_model(config: Config, meta: ModelMeta, model_uri: str, device: str) -> LoadedModel:
    """The base model as the config names it; it must be the one the fine-tuned model started from."""
    spec = config.model
    loaded = load_model(spec.arch, spec.pretrained, init_seed=spec.init_seed, device=device)
    if loaded.identity != meta.base_identity:
        raise ValueError(
            f"the zero-shot model {loaded.identity!r} is not the one {model_uri} was "
            f"fine-tuned from ({meta.base_identity!r}); pass the same model config"
        )
    return loaded


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("evaluate", "Evaluate a fine-tuned model (and the zero-shot model) on the eval sets.")
    parser.add_argument("--model", required=True, help="output folder of finetune")
    parser.add_argument("--splits", required=True, help="output folder of sample-splits")
    parser.add_argument("--out", required=True, help="folder or s3:// prefix for metrics.json, report.md and plots")
    parser.add_argument("--domain", action="append", default=[], help="only these domains (repeatable)")
    parser.add_argument(
        "--baseline-cache",
        default="",
        help="folder or s3:// prefix keeping the zero-shot model's per-set metrics across runs (default: off)",
    )
    distributed.add_ranks_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    body = run(
        args.model, args.splits, args.out, config_from(args), tuple(args.domain), baseline_cache=args.baseline_cache
    )
    print(markdown(body, [m for m in ("zeroshot", "finetuned") if m in body.mean]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
