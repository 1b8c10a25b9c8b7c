"""``python pipeline.py run|compile|submit|schedule``: the pipeline's command line (parameters checked against the
DAG's own inputs, a local run through kfp.local, submission and schedules on a KFP server)."""

import argparse
import contextlib
import dataclasses
import difflib
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from clipcite.pipeline.dag import build_pipeline, compile_pipeline
from clipcite.pipeline.settings import ClusterSettings

log = logging.getLogger("pipeline")


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


def run_local(
    params: dict,
    out: Path,
    *,
    caching: bool = True,
    quiet: bool = False,
    runner: str = "subprocess",
    methods: tuple[str, ...] | None = None,
) -> dict:
    """Run the DAG through kfp.local (subprocesses in this Python environment) after checking its parameters;
    returns the merged metrics, the resolved config and where the outputs are (see ``local_run.run_dag``).
    ``methods``: the candidate methods (None = ``ClusterSettings.from_env()``'s)."""
    from clipcite.pipeline import local_run

    settings = dataclasses.replace(ClusterSettings.from_env(), retries=0)  # retries are for clusters' hiccups
    if methods is not None:
        settings = dataclasses.replace(settings, methods=methods)
    pipeline_func = build_pipeline(settings, local_failure=str(local_run.failure_file(out).resolve()))
    config = check_params(params, pipeline_func.component_spec.inputs)
    if not params.get("data_uri"):
        from clipcite.toyworld.generate import write_world

        data = out / "data" / "toyworld"
        if not data.exists():  # a line of the default output (no log file yet): the first run waits for it
            print(f"toy world: generating {data} (first run only)", flush=True)
            write_world(str(data), seed=1)
        params = {**params, "data_uri": str(data.resolve())}
    if not params.get("baseline_cache"):  # a second `make run` evaluates the zero-shot model no more
        params = {**params, "baseline_cache": str((out / "baselines").resolve())}
    if not params.get("teacher_store"):  # a rerun with another lr or alpha runs the teacher no more
        params = {**params, "teacher_store": str((out / "teachers").resolve())}
    result = local_run.run_dag(pipeline_func, params, out, caching=caching, quiet=quiet, runner=runner)
    return {**result, "config": config}


class Unreachable(RuntimeError):
    """The KFP API server did not answer, or refused the request: one line for the user, no traceback."""


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


@contextlib.contextmanager
def talking_to(host: str) -> Iterator[None]:
    """Around every call to the KFP server: a connection failure or an HTTP error becomes :class:`Unreachable`
    naming the URL and the reason (kfp's client raises urllib3's MaxRetryError after ~100 lines of traceback), and
    the client's FutureWarning about server versions is silenced (the minimum backend is checked in docs)."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"kfp\.client")
        try:
            yield
        except ApiException as e:
            raise Unreachable(f"Kubeflow Pipelines at {host} refused the request: HTTP {e.status} {e.reason}") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise Unreachable(f"cannot reach Kubeflow Pipelines at {host}: {_reason(e)}") from e


def _reason(error: Exception) -> str:
    """urllib3's innermost words ("[Errno 111] Connection refused"), without its connection-pool preamble."""
    import urllib3

    if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
        error = error.reason
    return re.sub(r"^\w+\([^)]*\):\s*", "", str(error)) or type(error).__name__


def cron_expression(text: str) -> str:
    """``--cron``: KFP's 6 fields (seconds first) or a descriptor (``@daily``, ``@every 1h``), checked here; a
    5-field crontab line is refused with its 6-field form, which the server would otherwise reject after upload."""
    fields = text.split()
    if text.strip().startswith("@") or len(fields) == 6:
        return text
    hint = f": for a 5-field crontab line put the seconds first, --cron {'0 ' + text!r}" if len(fields) == 5 else ""
    raise argparse.ArgumentTypeError(
        f"{text!r} has {len(fields)} field(s); KFP takes 6, seconds first "
        f"(second minute hour day-of-month month day-of-week, e.g. '0 0 3 * * 1' = Mondays 03:00){hint}"
    )


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
    package = compile_pipeline(Path(args.workdir) / "pipeline.yaml", args.settings)
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
    package = compile_pipeline(Path(args.workdir) / "pipeline.yaml", args.settings)
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
    from clipcite.logs import setup_logging
    from clipcite.pipeline import local_run

    setup_logging()
    try:
        result = run_local(
            params,
            Path(args.out),
            caching=not args.no_cache,
            quiet=not args.verbose,
            runner=args.runner,
            methods=args.settings.methods,
        )
    except RuntimeError as e:
        print(f"pipeline.py run: error: {e}", file=sys.stderr)
        return 1
    local_run.print_summary(result, params["tracking_uri"])
    return 0


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _add_methods_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--methods",
        default=None,
        metavar="M1,M2,...",
        help="candidate methods, e.g. cite,lora,linear_probe: one finetune and validate each, the winner on "
        "validation is registered, every candidate's test numbers go on its card (default: $CLIPCITE_METHODS, "
        "else the run's train.method)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        args.settings = ClusterSettings.from_env()
        if args.methods is not None:
            args.settings = dataclasses.replace(args.settings, methods=_names(args.methods))
    except ValueError as e:
        parser.error(str(e))

    if args.command == "compile":
        print(compile_pipeline(args.output, args.settings))
        return 0
    try:
        inputs = build_pipeline(ClusterSettings()).component_spec.inputs
        params = parse_params(args.param, inputs)
        if args.command == "run":
            from clipcite.tracking.default_uri import default_tracking_uri

            params.setdefault("tracking_uri", default_tracking_uri(args.tracking_uri))
            return run(args, params)
        if "data_uri" not in params:
            raise ValueError("a cluster run needs its data: --param data_uri=s3://bucket/table (or a folder of images)")
        check_params(params, inputs)
    except ValueError as e:  # a parameter, preset or override: one line that names it, no traceback
        print(f"pipeline.py {args.command}: error: {e}", file=sys.stderr)
        return 2
    return _on_the_server(args, params)


def _on_the_server(args: argparse.Namespace, params: dict) -> int:
    """``submit`` or ``schedule``, after the parameters passed the checks."""
    try:
        with talking_to(args.host):
            response = submit(args, params) if args.command == "submit" else schedule(args, params)
    except Unreachable as e:
        print(f"pipeline.py {args.command}: error: {e}", file=sys.stderr)
        return 1
    print(response)
    return 0


def _parser() -> argparse.ArgumentParser:
    """``pipeline.py``'s sub-commands, one function each: run, compile, submit, schedule."""
    parser = argparse.ArgumentParser(
        prog="pipeline.py",
        description=" ".join(__doc__.replace("``", "").split()),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run(commands)
    _add_compile(commands)
    _add_submit(_add_server_command(commands, "submit"))
    _add_schedule(_add_server_command(commands, "schedule"))
    return parser


def _add_run(commands) -> None:
    run_p = commands.add_parser("run", help="run locally through kfp.local (offline default: the toy world)")
    run_p.add_argument("--out", default="runs/pipeline", help="local pipeline root, cache and generated data")
    run_p.add_argument("--no-cache", action="store_true", help="rerun every step")
    run_p.add_argument(
        "--runner",
        choices=("subprocess", "docker"),
        default="subprocess",
        help="subprocess: each step a process in this environment (default); docker: each step in its image, "
        "through a Docker engine or podman's Docker API at $DOCKER_HOST (docs/containers.md)",
    )
    run_p.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db); 'off' disables tracking",
    )
    run_p.add_argument("-v", "--verbose", action="store_true", help="print kfp.local's whole log, not one line a task")
    _add_methods_argument(run_p)
    _add_param_argument(run_p)


def _add_compile(commands) -> None:
    compile_p = commands.add_parser("compile", help="write the pipeline spec")
    compile_p.add_argument(
        "--output",
        default="pipeline.yaml",
        help="where to write the spec (YAML; default: pipeline.yaml in the working directory)",
    )
    _add_methods_argument(compile_p)


def _add_server_command(commands, name: str) -> argparse.ArgumentParser:
    """What submit and schedule share: the server, where the run's artifacts go, who the steps run as."""
    p = commands.add_parser(name, help=f"{name} on a Kubeflow Pipelines server")
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    p.add_argument("--namespace", help="Kubeflow profile namespace")
    p.add_argument("--experiment", default="clipcite", help="KFP experiment the run is filed under")
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
    return p


def _add_submit(submit_p: argparse.ArgumentParser) -> None:
    submit_p.add_argument("--run-name", default=None, help="the KFP run's name (default: KFP's)")
    _add_methods_argument(submit_p)
    _add_param_argument(submit_p)


def _add_schedule(sched: argparse.ArgumentParser) -> None:
    sched.add_argument(
        "--cron",
        required=True,
        type=cron_expression,
        help='6-field cron, seconds first, e.g. "0 0 3 * * 1" (Mondays 03:00), or @daily, @every 6h',
    )
    sched.add_argument("--job-name", default="clipcite-retrain", help="the recurring run's name")
    sched.add_argument("--max-concurrency", type=int, default=1, help="runs of this schedule at once")
    sched.add_argument("--no-catchup", action="store_true", help="skip the runs missed while paused")
    _add_methods_argument(sched)
    _add_param_argument(sched)


def _add_param_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline parameter: data_uri, eval_data_uris, config, shots, seed, arch, pretrained, "
        "method, overrides, experiment_name, registered_model_name, tracking_uri, checkpoint_root, baseline_cache, "
        "teacher_store (defaults with an s3:// --pipeline-root: <root>/checkpoints, <root>/baselines, "
        "<root>/teachers; run: baseline_cache and teacher_store default to <out>/baselines, <out>/teachers)",
    )
