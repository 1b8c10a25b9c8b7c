"""The clipcite Kubeflow pipeline (KFP v2): the DAG, as pure wiring. Its command line is
:mod:`clipcite.pipeline.cli` (``python pipeline.py run|compile|submit|schedule``), the cluster settings applied to its
tasks :mod:`clipcite.pipeline.settings`.

DAG: snapshot -> sample_splits -> cache_teacher -> finetune -> ParallelFor(domain: evaluate) -> register.
With several methods (ClusterSettings.methods, --methods cite,lora,linear_probe), one finetune and validate per
method share the teacher cache, and select picks the one that goes on to evaluate and register:
    cache_teacher -> {finetune-<m> -> validate-<m>} for each m -> select -> ParallelFor(evaluate) -> register;
evaluate also scores every candidate beside the winner (the card's test column; select never sees it).
Cluster settings (GPU count, requests, /dev/shm, tolerations, node selector, images) are read when the pipeline is
built, from the environment (see ClusterSettings) or the compile/submit flags.
"""

from pathlib import Path
from types import SimpleNamespace

from kfp import compiler, dsl

from clipcite.pipeline.components.cache_teacher import cache_teacher
from clipcite.pipeline.components.evaluate import evaluate
from clipcite.pipeline.components.finetune import finetune
from clipcite.pipeline.components.finish_run import finish_run
from clipcite.pipeline.components.register import register
from clipcite.pipeline.components.sample_splits import sample_splits
from clipcite.pipeline.components.select import select
from clipcite.pipeline.components.snapshot import snapshot
from clipcite.pipeline.components.validate import validate
from clipcite.pipeline.settings import ClusterSettings, cpu_task, gpu_task
from clipcite.records import step_name
from clipcite.steps.run_config import CONFIG_PARAMETERS

PIPELINE_NAME = "clipcite"


def build_pipeline(settings: ClusterSettings | None = None, *, local_failure: str = ""):
    """The pipeline function, with cluster settings applied to its tasks. Its body reads as the DAG drawn in
    docs/cluster.md, one function per stage. ``local_failure``: for a local run, the file where its console reader
    writes the task it saw fail, for the exit task (see :func:`_closing`)."""
    settings = settings or ClusterSettings.from_env()

    @dsl.pipeline(name=PIPELINE_NAME, description="Few-shot CLIP fine-tuning with CLIP-CITE, evaluated per domain")
    def clipcite_pipeline(
        data_uri: str,
        eval_data_uris: list = [],  # noqa: B006  (KFP pipeline defaults are literals)
        config: str = "default",
        shots: int = 16,
        seed: int = 1,
        arch: str = "",
        pretrained: str = "",
        method: str = "",
        overrides: dict = {},  # noqa: B006
        experiment_name: str = "clipcite",
        registered_model_name: str = "clipcite",
        tracking_uri: str = "",
        checkpoint_root: str = "",
        baseline_cache: str = "",
        teacher_store: str = "",
    ):
        run = SimpleNamespace(**locals())  # the pipeline's parameters, for the stages below
        closing = _closing(run, settings, local_failure)
        with dsl.ExitHandler(closing, name="clipcite-run"):
            data = _snapshot_and_splits(run, settings)
            teacher = _teacher_cache(run, settings, data)
            candidates = _finetune_each(run, settings, data, teacher)
            model, selection = _select(run, settings, data, candidates)
            evaluation = _evaluate_domains(run, settings, data, model, candidates)
            _register(run, settings, data, model, evaluation, selection)
        # No pipeline outputs: KFP allows them only outside the exit handler; register's record and summary are
        # its artifacts (local runs find them under the run's root).

    return clipcite_pipeline


def _closing(run: SimpleNamespace, settings: ClusterSettings, local_failure: str):
    """The exit handler's task: it runs whatever happens inside, so the MLflow run ends FINISHED, or FAILED naming
    the failed step."""
    closing = finish_run(
        tracking_uri=run.tracking_uri,
        experiment_name=run.experiment_name,
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        # kfp.local tells the exit task only "Task clipcite-run failed."; `pipeline.py run` reads which task failed
        # off kfp.local's output into this file. A cluster's step runs say it: nothing is wired there.
        **({"local_failure": local_failure} if local_failure else {}),
    )
    cpu_task(closing, settings, cache=False)
    return closing


def _snapshot_and_splits(run: SimpleNamespace, settings: ClusterSettings) -> SimpleNamespace:
    """snapshot (the data's digest, the MLflow run, the base model's identity) -> sample_splits (cached on the
    digest); returns what the later stages read of them."""
    # what the run's config is resolved from: the preset, the named parameters, then the overrides
    resolved = {"config": run.config, **{k: getattr(run, k) for k in CONFIG_PARAMETERS}, "overrides": run.overrides}
    snap = snapshot(
        data_uri=run.data_uri,
        eval_data_uris=run.eval_data_uris,
        tracking_uri=run.tracking_uri,
        experiment_name=run.experiment_name,
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        **resolved,
    )
    cpu_task(snap, settings, cache=False, retry_backoff="30s")
    splits = sample_splits(
        data_uri=run.data_uri,
        eval_data_uris=run.eval_data_uris,
        data_digest=snap.outputs["digest"],
        **resolved,
    )
    cpu_task(splits, settings, cache=True, retry_backoff="30s")
    return SimpleNamespace(
        splits=splits.outputs["splits"],
        domains=splits.outputs["Output"],
        run_config=splits.outputs["run_config"],  # the resolved config (YAML) every later step reads
        model_identity=snap.outputs["model_identity"],
        # The MLflow run crosses as a small artifact, not a string: kfp.local (2.17) hands a task inside a
        # ParallelFor the loop item in place of an upstream task's string output; artifacts resolve right there.
        mlflow_run=snap.outputs["mlflow_run"],
    )


def _teacher_cache(run: SimpleNamespace, settings: ClusterSettings, data: SimpleNamespace):
    teacher = cache_teacher(
        splits=data.splits,
        run_config=data.run_config,
        model_identity=data.model_identity,
        teacher_store=run.teacher_store,  # "" = off; a rerun with other train.* settings reuses it by content
    )
    gpu_task(teacher, settings, cache=True, retry_backoff="60s")
    return teacher


def _finetune_each(run: SimpleNamespace, settings: ClusterSettings, data: SimpleNamespace, teacher) -> dict:
    """{method: its model}: one method (settings.methods empty: the run's train.method; or one name), or several
    candidates, a finetune task per method unrolled here at compile time (finetune's retries need tasks outside a
    ParallelFor), sharing the teacher cache."""
    candidates = {}
    for method in settings.methods or ("",):
        trained = finetune(
            splits=data.splits,
            run_config=data.run_config,
            teacher=teacher.outputs["teacher"],
            mlflow_run=data.mlflow_run,
            tracking_uri=run.tracking_uri,
            checkpoint_root=run.checkpoint_root,  # "" = in the pod; s3://... survives preemption and retries
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            **({"method": method} if method else {}),  # "" = the config's train.method (one finetune)
        )
        gpu_task(trained, settings, cache=False, retry_backoff="60s")  # a retry resumes from its checkpoint
        if len(settings.methods) > 1:
            trained.set_display_name(step_name("finetune", method))
        candidates[method] = trained.outputs["model"]
    return candidates


def _select(run: SimpleNamespace, settings: ClusterSettings, data: SimpleNamespace, candidates: dict):
    """(the model that goes on, select's choice or None): with one candidate, its model; with several, a validate
    task each, then select, which sees validation scores only and passes the winner's model on."""
    if len(candidates) == 1:
        (model,) = candidates.values()
        return model, None
    scored = {}
    for method, candidate in candidates.items():
        scoring = validate(
            model=candidate,
            splits=data.splits,
            run_config=data.run_config,
            mlflow_run=data.mlflow_run,
            tracking_uri=run.tracking_uri,
        ).set_display_name(step_name("validate", method))
        gpu_task(scoring, settings, cache=False, retry_backoff="60s")
        scored[f"{method}_model"], scored[f"{method}_scores"] = candidate, scoring.outputs["scores"]
    chosen = select(mlflow_run=data.mlflow_run, tracking_uri=run.tracking_uri, **scored)
    cpu_task(chosen, settings, cache=False, retry_backoff="30s")
    return chosen.outputs["model"], chosen.outputs["choice"]


def _evaluate_domains(run: SimpleNamespace, settings: ClusterSettings, data: SimpleNamespace, model, candidates: dict):
    """ParallelFor(domain) { evaluate }: the model on each eval domain; with several candidates every one is scored
    beside the winner, for the card (select chose already, on validation)."""
    with dsl.ParallelFor(data.domains, name="eval-domains") as domain:
        evaluation = evaluate(
            model=model,
            splits=data.splits,
            run_config=data.run_config,
            mlflow_run=data.mlflow_run,
            domain=domain,
            tracking_uri=run.tracking_uri,
            registered_model_name=run.registered_model_name,
            baseline_cache=run.baseline_cache,  # "" = off; zero-shot metrics reused across runs
            # The step retries itself: backends ignore set_retry inside a ParallelFor (kubeflow/pipelines
            # #12389), so this task has no retry policy of its own.
            attempts=settings.retries + 1,
            **({f"{m}_model": c for m, c in candidates.items()} if len(candidates) > 1 else {}),
        )
        gpu_task(evaluation, settings, cache=False)
    return evaluation


def _register(
    run: SimpleNamespace, settings: ClusterSettings, data: SimpleNamespace, model, evaluation, selection
) -> None:
    """register: every domain's report collected, the model recorded and, with MLflow, registered and gated."""
    registered = register(
        model=model,
        reports=dsl.Collected(evaluation.outputs["report"]),
        run_config=data.run_config,
        mlflow_run=data.mlflow_run,
        registered_model_name=run.registered_model_name,
        experiment_name=run.experiment_name,
        tracking_uri=run.tracking_uri,
        **({"selection": selection} if selection is not None else {}),  # the candidates, for the card
    )
    cpu_task(registered, settings, cache=False)


def compile_pipeline(output: str | Path, settings: ClusterSettings | None = None) -> Path:
    compiler.Compiler().compile(build_pipeline(settings), str(output))
    return Path(output)
