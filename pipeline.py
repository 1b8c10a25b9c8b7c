"""The clipcite Kubeflow pipeline (KFP v2) and its command line.

    python pipeline.py run                     # local, through kfp.local, on the offline default (the toy world)
    python pipeline.py compile [--output pipeline.yaml]
    python pipeline.py submit --host URL [--experiment NAME] [--namespace NS] [--param key=value ...]
    python pipeline.py schedule --host URL --cron "0 0 3 * * 1" [--max-concurrency N] [--no-catchup]

DAG: snapshot -> sample_splits -> cache_teacher -> finetune -> ParallelFor(domain: evaluate) -> register.
Cluster settings (GPU count, requests, /dev/shm, tolerations, node selector, images) are read when the pipeline is
built, from the environment (see ClusterSettings) or the compile/submit flags.
"""

import argparse
import dataclasses
import difflib
import json
import logging
import os
import sys
from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components.cache_teacher import cache_teacher
from components.evaluate import evaluate
from components.finetune import finetune
from components.finish_run import finish_run
from components.register import register
from components.sample_splits import sample_splits
from components.snapshot import snapshot

PIPELINE_NAME = "clipcite"
ROOT = Path(__file__).resolve().parent
log = logging.getLogger("pipeline")


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """Where and how the steps run on a cluster; every field has a CLIPCITE_* environment variable."""

    gpu_limit: int = 1  # CLIPCITE_GPU_LIMIT: > 1 runs the GPU steps in that many data-parallel ranks (torchrun)
    gpu_resource: str = "nvidia.com/gpu"  # CLIPCITE_GPU_RESOURCE
    gpu_cpu_request: str = "4"  # CLIPCITE_GPU_CPU_REQUEST
    gpu_memory_request: str = "32G"  # CLIPCITE_GPU_MEMORY_REQUEST
    cpu_cpu_request: str = "1"  # CLIPCITE_CPU_CPU_REQUEST
    cpu_memory_request: str = "4G"  # CLIPCITE_CPU_MEMORY_REQUEST
    shm_size: str = ""  # CLIPCITE_SHM_SIZE: memory-backed /dev/shm for DataLoader workers; "" = 16Gi per GPU (rank)
    tolerations: tuple[str, ...] = ()  # CLIPCITE_TOLERATIONS: "key=value:Effect" or "key:Effect", comma-separated
    node_selector: tuple[str, ...] = ()  # CLIPCITE_NODE_SELECTOR: "label=value", comma-separated
    retries: int = 2  # CLIPCITE_RETRIES: for steps that can fail transiently (storage, preemption)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ClusterSettings":
        env = os.environ if env is None else env
        values: dict = {}
        for field in dataclasses.fields(cls):
            raw = env.get(f"CLIPCITE_{field.name.upper()}")
            if raw is None:
                continue
            if field.type in ("int", int):
                values[field.name] = int(raw)
            elif "tuple" in str(field.type):
                values[field.name] = tuple(x.strip() for x in raw.split(",") if x.strip())
            else:
                values[field.name] = raw
        return cls(**values)

    def shm(self) -> str:
        return self.shm_size or f"{16 * self.gpu_limit}Gi"


POD_LABEL = ("clipcite.io/mlflow", "true")  # the Kubeflow PodDefault in manifests/ injects MLflow and S3 settings


def _gpu_task(task: dsl.PipelineTask, settings: ClusterSettings) -> dsl.PipelineTask:
    kubernetes.add_pod_label(task, *POD_LABEL)
    task.set_accelerator_type(settings.gpu_resource).set_accelerator_limit(settings.gpu_limit)
    task.set_cpu_request(settings.gpu_cpu_request).set_memory_request(settings.gpu_memory_request)
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=settings.shm()
    )
    if settings.gpu_limit > 1:  # the step's run() relaunches itself in one torchrun rank per GPU
        task.set_env_variable("CLIPCITE_NPROC_PER_NODE", str(settings.gpu_limit))
    for toleration in settings.tolerations:
        key_value, _, effect = toleration.partition(":")
        key, eq, value = key_value.partition("=")
        kubernetes.add_toleration(
            task, key=key, operator="Equal" if eq else "Exists", value=value or None, effect=effect or None
        )
    for selector in settings.node_selector:
        label, _, value = selector.partition("=")
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    return task


def _cpu_task(task: dsl.PipelineTask, settings: ClusterSettings) -> dsl.PipelineTask:
    kubernetes.add_pod_label(task, *POD_LABEL)
    return task.set_cpu_request(settings.cpu_cpu_request).set_memory_request(settings.cpu_memory_request)


def build_pipeline(settings: ClusterSettings | None = None):
    """The pipeline function, with cluster settings applied to its tasks."""
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
        # Runs whatever happens inside: the MLflow run ends FINISHED, or FAILED naming the failed step.
        closing = finish_run(
            tracking_uri=tracking_uri, experiment_name=experiment_name, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER
        )
        _cpu_task(closing, settings).set_caching_options(False)
        with dsl.ExitHandler(closing, name="clipcite-run"):
            snap = snapshot(
                data_uri=data_uri,
                eval_data_uris=eval_data_uris,
                tracking_uri=tracking_uri,
                experiment_name=experiment_name,
                kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                config=config,
                arch=arch,
                pretrained=pretrained,
                overrides=overrides,
            )
            _cpu_task(snap, settings)
            run_id = snap.outputs["mlflow_run_id"]
            snap.set_caching_options(False).set_retry(settings.retries, backoff_duration="30s", backoff_factor=2)
            splits = sample_splits(
                data_uri=data_uri,
                eval_data_uris=eval_data_uris,
                data_digest=snap.outputs["digest"],
                config=config,
                shots=shots,
                seed=seed,
                arch=arch,
                pretrained=pretrained,
                method=method,
                overrides=overrides,
            )
            _cpu_task(splits, settings).set_caching_options(True)
            splits.set_retry(settings.retries, backoff_duration="30s", backoff_factor=2)
            teacher = cache_teacher(
                splits=splits.outputs["splits"],
                model_identity=snap.outputs["model_identity"],
                teacher_store=teacher_store,  # "" = off; a rerun with other train.* settings reuses it by content
            )
            _gpu_task(teacher, settings).set_caching_options(True)
            teacher.set_retry(settings.retries, backoff_duration="60s", backoff_factor=2)
            model = finetune(
                splits=splits.outputs["splits"],
                teacher=teacher.outputs["teacher"],
                tracking_uri=tracking_uri,
                mlflow_run_id=run_id,
                checkpoint_root=checkpoint_root,  # "" = in the pod; s3://... survives preemption and retries
                kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            )
            _gpu_task(model, settings).set_caching_options(False)
            model.set_retry(settings.retries, backoff_duration="60s", backoff_factor=2)  # resumes from its checkpoint
            with dsl.ParallelFor(splits.outputs["Output"], name="eval-domains") as domain:
                evaluation = evaluate(
                    model=model.outputs["model"],
                    splits=splits.outputs["splits"],
                    domain=domain,
                    tracking_uri=tracking_uri,
                    registered_model_name=registered_model_name,
                    baseline_cache=baseline_cache,  # "" = off; zero-shot metrics reused across runs
                )
                _gpu_task(evaluation, settings).set_caching_options(False)
                evaluation.set_retry(settings.retries, backoff_duration="60s", backoff_factor=2)
            registered = register(
                model=model.outputs["model"],
                reports=dsl.Collected(evaluation.outputs["report"]),
                registered_model_name=registered_model_name,
                experiment_name=experiment_name,
                tracking_uri=tracking_uri,
            )
            _cpu_task(registered, settings).set_caching_options(False)
        # No pipeline outputs: KFP allows them only outside the exit handler; register's record and summary are
        # its artifacts (local runs find them under the run's root).

    return clipcite_pipeline


def compile_pipeline(output: str | Path, settings: ClusterSettings | None = None) -> Path:
    compiler.Compiler().compile(build_pipeline(settings), str(output))
    return Path(output)


# ---------------------------------------------------------------------------------------------------- command line


PARAM_TYPES = {
    "String": "a string",
    "Integer": "an integer",
    "Float": "a number",
    "Boolean": "true or false",
    "List": "a JSON list, e.g. '[\"s3://bucket/table\"]'",
    "Dict": "a JSON object, e.g. '{\"train.epochs\": 5}'",
}


def parse_params(items: list[str], inputs: dict | None = None) -> dict:
    """``key=value`` pipeline parameters, checked against the pipeline's own inputs (``component_spec.inputs``) so
    a misspelt name or a value of the wrong type fails here, naming the parameter, before anything runs."""
    inputs = inputs if inputs is not None else build_pipeline(ClusterSettings()).component_spec.inputs
    params = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--param {item!r}: expected key=value, e.g. --param shots=8")
        if key not in inputs:
            close = difflib.get_close_matches(key, list(inputs), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"--param {item!r}: the pipeline has no parameter {key!r}; {hint}they are: {', '.join(inputs)}"
            )
        params[key] = _typed(key, raw, inputs[key].type)
    return params


def _typed(key: str, raw: str, kind: str):
    if kind == "String":
        return raw
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    expected = {"Integer": int, "Float": (int, float), "Boolean": bool, "List": list, "Dict": dict}[kind]
    if not isinstance(value, expected) or (kind in ("Integer", "Float") and isinstance(value, bool)):
        raise ValueError(f"--param {key}={raw}: {key} takes {PARAM_TYPES[kind]}")
    return value


def check_params(params: dict, inputs: dict):
    """The run's config as its steps will resolve it (preset, parameters, overrides), so a wrong preset, method or
    override fails before kfp starts; returns it (the summary's heading says what ran)."""
    from clipcite.steps.run_config import CONFIG_PARAMETERS, run_config

    values = {name: spec.default for name, spec in inputs.items()} | params
    return run_config(values["config"], values["overrides"], **{name: values[name] for name in CONFIG_PARAMETERS})


def run_local(params: dict, out: Path, *, caching: bool = True, quiet: bool = False) -> dict:
    """Run the DAG through kfp.local (subprocesses in this Python environment) after checking its parameters;
    returns the merged metrics, the resolved config and where the outputs are (see ``local_run.run_dag``)."""
    import local_run

    settings = dataclasses.replace(ClusterSettings.from_env(), retries=0)  # retries are for clusters' hiccups
    pipeline_func = build_pipeline(settings)
    config = check_params(params, pipeline_func.component_spec.inputs)
    if not params.get("data_uri"):
        from clipcite.toyworld.generate import write_world

        data = out / "data" / "toyworld"
        if not data.exists():
            log.info("generating the toy world at %s", data)
            write_world(str(data), seed=1)
        params = {**params, "data_uri": str(data.resolve())}
    if not params.get("baseline_cache"):  # a second `make run` evaluates the zero-shot model no more
        params = {**params, "baseline_cache": str((out / "baselines").resolve())}
    if not params.get("teacher_store"):  # a rerun with another lr or alpha runs the teacher no more
        params = {**params, "teacher_store": str((out / "teachers").resolve())}
    return {**local_run.run_dag(pipeline_func, params, out, caching=caching, quiet=quiet), "config": config}


def make_client(host: str, namespace: str | None = None, token: str | None = None):
    """kfp.Client with an existing token (flag or KFP_TOKEN), else the in-cluster service-account token."""
    import kfp
    from kfp.client import ServiceAccountTokenVolumeCredentials

    token = token or os.environ.get("KFP_TOKEN")
    if token:
        return kfp.Client(host=host, namespace=namespace, existing_token=token)
    sa_token = os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", "/var/run/secrets/kubeflow/pipelines/token")
    if Path(sa_token).is_file():
        return kfp.Client(host=host, namespace=namespace, credentials=ServiceAccountTokenVolumeCredentials(sa_token))
    return kfp.Client(host=host, namespace=namespace)


def durable_roots(params: dict, pipeline_root: str | None) -> dict:
    """On a cluster, finetune checkpoints under ``<pipeline root>/checkpoints`` and evaluate keeps the zero-shot
    baseline under ``<pipeline root>/baselines`` when the root is on S3 and the parameter was not given, so a
    preempted GPU pod resumes instead of starting again and a rerun does not evaluate the base model again."""
    if not (pipeline_root or "").startswith("s3://"):
        return params
    root = pipeline_root.rstrip("/")
    defaults = {
        "checkpoint_root": f"{root}/checkpoints",
        "baseline_cache": f"{root}/baselines",
        "teacher_store": f"{root}/teachers",
    }
    return defaults | {k: v for k, v in params.items() if k not in defaults or v}


def submit(args: argparse.Namespace, params: dict):
    client = make_client(args.host, args.namespace, args.token)
    params = durable_roots(params, args.pipeline_root)
    package = compile_pipeline(Path(args.workdir) / "pipeline.yaml")
    return client.create_run_from_pipeline_package(
        str(package),
        arguments=params,
        run_name=args.run_name,
        experiment_name=args.experiment,
        namespace=args.namespace,
        pipeline_root=args.pipeline_root,
        service_account=args.service_account,
    )


def schedule(args: argparse.Namespace, params: dict):
    """A recurring run: each run snapshots the data source as it is then, so new few-shot data is picked up."""
    client = make_client(args.host, args.namespace, args.token)
    params = durable_roots(params, args.pipeline_root)
    package = compile_pipeline(Path(args.workdir) / "pipeline.yaml")
    experiment = client.create_experiment(args.experiment, namespace=args.namespace)
    return client.create_recurring_run(
        experiment_id=experiment.experiment_id,
        job_name=args.job_name,
        cron_expression=args.cron,
        max_concurrency=args.max_concurrency,
        no_catchup=args.no_catchup,
        params=params,
        pipeline_package_path=str(package),
        pipeline_root=args.pipeline_root,
        service_account=args.service_account,
        enabled=True,
    )


def run(args: argparse.Namespace, params: dict) -> int:
    """``pipeline.py run``: quiet unless -v, the summary and where the outputs are at the end."""
    import local_run
    from clipcite.steps.common import setup_logging

    setup_logging()
    try:
        result = run_local(params, Path(args.out), caching=not args.no_cache, quiet=not args.verbose)
    except RuntimeError as e:
        print(f"pipeline.py run: error: {e}", file=sys.stderr)
        return 1
    local_run.print_summary(result, params["tracking_uri"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_p = commands.add_parser("run", help="run locally through kfp.local (offline default: the toy world)")
    run_p.add_argument("--out", default="runs/pipeline", help="local pipeline root, cache and generated data")
    run_p.add_argument("--no-cache", action="store_true", help="rerun every step")
    run_p.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db); 'off' disables tracking",
    )
    run_p.add_argument("-v", "--verbose", action="store_true", help="print kfp.local's whole log, not one line a task")
    compile_p = commands.add_parser("compile", help="write the pipeline spec")
    compile_p.add_argument("--output", default=str(ROOT / "pipeline.yaml"))
    for name in ("submit", "schedule"):
        p = commands.add_parser(name, help=f"{name} on a Kubeflow Pipelines server")
        p.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
        p.add_argument("--namespace", help="Kubeflow profile namespace")
        p.add_argument("--experiment", default="clipcite")
        p.add_argument("--token", help="bearer token (default: $KFP_TOKEN, else the in-cluster service account)")
        p.add_argument("--workdir", default=".", help="where the compiled spec is written before upload")
        p.add_argument(
            "--pipeline-root",
            default=os.environ.get("CLIPCITE_PIPELINE_ROOT") or None,
            help="where KFP stores this run's artifacts, e.g. s3://bucket/kfp (default: the deployment's)",
        )
        p.add_argument(
            "--service-account",
            default=os.environ.get("CLIPCITE_SERVICE_ACCOUNT") or None,
            help="service account the steps run as, e.g. clipcite-pipeline from manifests/ (default: the profile's)",
        )
    commands.choices["submit"].add_argument("--run-name", default=None)
    sched = commands.choices["schedule"]
    sched.add_argument("--cron", required=True, help='6-field cron, e.g. "0 0 3 * * 1" (Mondays 03:00)')
    sched.add_argument("--job-name", default="clipcite-retrain")
    sched.add_argument("--max-concurrency", type=int, default=1)
    sched.add_argument("--no-catchup", action="store_true", help="skip the runs missed while paused")
    for p in (run_p, commands.choices["submit"], sched):
        p.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="pipeline parameter: data_uri, eval_data_uris, config, shots, seed, arch, pretrained, "
            "method, overrides, experiment_name, registered_model_name, tracking_uri, checkpoint_root, baseline_cache, "
            "teacher_store (defaults with an s3:// --pipeline-root: <root>/checkpoints, <root>/baselines, "
            "<root>/teachers; run: baseline_cache and teacher_store default to <out>/baselines, <out>/teachers)",
        )
    args = parser.parse_args(argv)

    if args.command == "compile":
        print(compile_pipeline(args.output))
        return 0
    try:
        inputs = build_pipeline(ClusterSettings()).component_spec.inputs
        params = parse_params(args.param, inputs)
        if args.command == "run":
            from clipcite.cli import default_tracking_uri

            params.setdefault("tracking_uri", args.tracking_uri or default_tracking_uri())
            return run(args, params)
        if "data_uri" not in params:
            raise ValueError("a cluster run needs its data: --param data_uri=s3://bucket/table (or a folder of images)")
        check_params(params, inputs)
    except ValueError as e:  # a parameter, preset or override: one line that names it, no traceback
        print(f"pipeline.py {args.command}: error: {e}", file=sys.stderr)
        return 2
    response = submit(args, params) if args.command == "submit" else schedule(args, params)
    print(response)
    return 0


if __name__ == "__main__":
    sys.exit(main())
