"""The KFP pipeline: the committed spec, its structure, cluster settings, and submit/schedule client calls."""

from pathlib import Path
from unittest import mock

import pytest
import yaml

from clipcite.pipeline import cli, dag
from clipcite.pipeline import settings as pipeline_settings

ROOT = Path(__file__).resolve().parents[3]

STEPS = {"snapshot", "sample-splits", "cache-teacher", "finetune", "evaluate", "register"}
GPU_STEPS = {"cache-teacher", "finetune", "evaluate"}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = dag.compile_pipeline(tmp_path_factory.mktemp("spec") / "p.yaml", pipeline_settings.ClusterSettings())
    return path, [doc for doc in yaml.safe_load_all(path.read_text())]


def all_tasks(root: dict) -> dict:
    tasks = dict(root["root"]["dag"]["tasks"])
    for component in root["components"].values():
        if "dag" in component:
            tasks.update(component["dag"]["tasks"])
    return tasks


def test_committed_spec_matches_a_fresh_compile(spec):
    path, _ = spec
    assert (ROOT / "pipeline.yaml").read_text() == path.read_text(), (
        "pipeline.yaml is stale: run `python pipeline.py compile` and commit it"
    )


def test_dag_has_every_step_the_parallel_for_and_the_collected_reports(spec):
    _, (root, _) = spec
    tasks = all_tasks(root)
    assert {t.removesuffix("-2") for t in tasks} >= STEPS
    loop = next(c for c in root["components"].values() if "dag" in c and "evaluate" in c["dag"]["tasks"])
    (loop_name,) = [name for name, task in tasks.items() if "parameterIterator" in task]
    iterator = tasks[loop_name]["parameterIterator"]
    assert iterator["items"]["inputParameter"] == "pipelinechannel--sample-splits-Output"  # the eval domains
    assert "evaluate" in loop["dag"]["tasks"]
    reports = tasks["register"]["inputs"]["artifacts"]["reports"]
    assert "taskOutputArtifact" in reports and reports["taskOutputArtifact"]["producerTask"] == loop_name
    # order: snapshot -> sample-splits -> cache-teacher -> finetune
    assert tasks["sample-splits"]["dependentTasks"] == ["snapshot"]
    assert set(tasks["cache-teacher"]["dependentTasks"]) == {"sample-splits", "snapshot"}
    assert set(tasks["finetune"]["dependentTasks"]) == {"cache-teacher", "sample-splits", "snapshot"}


def test_mlflow_run_and_config_cross_the_dag_in_pipeline_py_and_not_into_cached_steps(spec):
    """The hallways are visible: the MLflow run is snapshot's artifact and the resolved config sample-splits', each
    an input of every step that uses it; the run (a per-run value) reaches no cached step."""
    _, (root, _) = spec
    tasks = all_tasks(root)
    snap = tasks["snapshot"]["inputs"]["parameters"]
    assert snap["kfp_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    # inside the exit handler's group a pipeline parameter arrives as a channel of the same name
    assert snap["tracking_uri"]["componentInputParameter"] == "pipelinechannel--tracking_uri"

    def artifact_source(task: str, name: str) -> dict:
        source = tasks[task]["inputs"]["artifacts"][name]
        if "componentInputArtifact" in source:  # inside the ParallelFor: the loop's input, fed from outside
            loop = next(t for t in tasks.values() if "parameterIterator" in t)
            source = loop["inputs"]["artifacts"][source["componentInputArtifact"]]
        return source["taskOutputArtifact"]

    for step in ("finetune", "evaluate", "register"):
        assert artifact_source(step, "mlflow_run") == {"producerTask": "snapshot", "outputArtifactKey": "mlflow_run"}
    for step in ("cache-teacher", "finetune", "evaluate", "register"):
        config = artifact_source(step, "run_config")
        assert config == {"producerTask": "sample-splits", "outputArtifactKey": "run_config"}
    for cached in ("sample-splits", "cache-teacher"):  # a per-run value would make every cache key unique
        inputs = tasks[cached]["inputs"]
        assert "mlflow_run" not in inputs.get("artifacts", {}) and "mlflow_run_id" not in inputs["parameters"]
    digest = tasks["sample-splits"]["inputs"]["parameters"]["data_digest"]["taskOutputParameter"]
    assert digest["outputParameterKey"] == "digest"
    # the base model's identity keys the teacher cache: replaced weights under the same path get a new cache
    identity = tasks["cache-teacher"]["inputs"]["parameters"]["model_identity"]["taskOutputParameter"]
    assert identity == {"producerTask": "snapshot", "outputParameterKey": "model_identity"}


def test_exit_handler_closes_the_mlflow_run_whatever_happens(spec):
    """Every step runs inside one ExitHandler whose exit task, finish-run, gets the group's final status."""
    _, (root, _) = spec
    top = root["root"]["dag"]["tasks"]
    (group,) = [name for name in top if name.startswith("exit-handler")]
    assert set(top) == {group, "finish-run"}
    finish = top["finish-run"]
    assert finish["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert finish["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"] == group
    assert finish["inputs"]["parameters"]["kfp_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    inside = root["components"][top[group]["componentRef"]["name"]]["dag"]["tasks"]
    nested = {t for c in root["components"].values() for t in c.get("dag", {}).get("tasks", {})}
    assert {"snapshot", "finetune", "register"} <= set(inside) and nested >= STEPS


def test_finetune_checkpoints_under_a_durable_root_keyed_by_the_run(spec):
    _, (root, _) = spec
    finetune = all_tasks(root)["finetune"]
    parameters = finetune["inputs"]["parameters"]
    assert parameters["checkpoint_root"]["componentInputParameter"] == "pipelinechannel--checkpoint_root"
    assert parameters["kfp_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert finetune["retryPolicy"]["maxRetryCount"] == 2  # a preempted pod comes back and resumes
    evaluate = all_tasks(root)["evaluate"]["inputs"]["parameters"]["baseline_cache"]
    assert evaluate["componentInputParameter"] == "pipelinechannel--baseline_cache"
    store = all_tasks(root)["cache-teacher"]["inputs"]["parameters"]["teacher_store"]
    assert store["componentInputParameter"] == "pipelinechannel--teacher_store"
    roots = {
        "checkpoint_root": "s3://b/kfp/checkpoints",
        "baseline_cache": "s3://b/kfp/baselines",
        "teacher_store": "s3://b/kfp/teachers",
    }
    assert cli.durable_roots({}, "s3://b/kfp") == roots
    given = {"checkpoint_root": "s3://x", "baseline_cache": "s3://y", "teacher_store": "s3://z"}
    assert cli.durable_roots(given, "s3://b/kfp") == given
    assert cli.durable_roots({"baseline_cache": ""}, "s3://b/kfp") == roots  # "" = the default here
    assert cli.durable_roots({}, None) == {} and cli.durable_roots({}, "gs://b") == {}


def test_only_sample_splits_and_cache_teacher_are_cached(spec):
    _, (root, _) = spec
    tasks = all_tasks(root)
    cached = {name for name, t in tasks.items() if t.get("cachingOptions", {}).get("enableCache")}
    assert cached == {"sample-splits", "cache-teacher"}


def test_gpu_limits_requests_and_shm_on_gpu_steps(spec):
    _, (root, platform) = spec
    executors = root["deploymentSpec"]["executors"]
    for step in STEPS:
        resources = executors[f"exec-{step}"]["container"].get("resources", {})
        if step in GPU_STEPS:
            assert resources["accelerator"]["resourceCount"] == "1"
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert "clipcite-cuda" in executors[f"exec-{step}"]["container"]["image"]
        else:
            assert "accelerator" not in resources
            assert "clipcite-cpu" in executors[f"exec-{step}"]["container"]["image"]
        assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == {f"exec-{s}" for s in (*STEPS, "finish-run")}  # every step carries the PodDefault's label
    for step, executor in k8s.items():
        if step.removeprefix("exec-") in GPU_STEPS:
            (mount,) = executor["emptyDirMounts"]
            assert mount["mountPath"] == "/dev/shm" and mount["medium"] == "Memory"
        else:
            assert "emptyDirMounts" not in executor


def test_cluster_settings_from_env_reach_the_spec(tmp_path):
    env = {
        "CLIPCITE_GPU_LIMIT": "2",
        "CLIPCITE_TOLERATIONS": "nvidia.com/gpu:NoSchedule, dedicated=ml:NoExecute",
        "CLIPCITE_NODE_SELECTOR": "gpu=h100",
        "CLIPCITE_RETRIES": "4",
    }
    settings = pipeline_settings.ClusterSettings.from_env(env)
    tolerations = ("nvidia.com/gpu:NoSchedule", "dedicated=ml:NoExecute")
    assert (settings.gpu_limit, settings.tolerations, settings.retries) == (2, tolerations, 4)
    root, platform = yaml.safe_load_all(dag.compile_pipeline(tmp_path / "p.yaml", settings).read_text())
    assert (
        root["deploymentSpec"]["executors"]["exec-finetune"]["container"]["resources"]["accelerator"]["resourceCount"]
        == "2"
    )
    finetune = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-finetune"]
    assert finetune["tolerations"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"},  # key:Effect
        {"effect": "NoExecute", "key": "dedicated", "operator": "Equal", "value": "ml"},  # key=value:Effect
    ]
    assert finetune["nodeSelector"] == {"labels": {"gpu": "h100"}}
    assert all_tasks(root)["cache-teacher"]["retryPolicy"]["maxRetryCount"] == 4


def assert_uploaded_spec(path: str, params: dict, tmp_path: Path) -> None:
    """The file handed to the client is the pipeline as compiled now, and it takes every parameter sent."""
    uploaded = Path(path).read_text()
    assert uploaded == dag.compile_pipeline(tmp_path / "fresh.yaml").read_text()
    root = next(yaml.safe_load_all(uploaded))
    assert root["pipelineInfo"]["name"] == "clipcite"
    assert set(params) <= set(root["root"]["inputDefinitions"]["parameters"])


@pytest.fixture
def no_cluster_env(monkeypatch):
    """Cluster settings come from CLIPCITE_* variables at compile time; none here, so both compiles agree."""
    for key in [k for k in __import__("os").environ if k.startswith("CLIPCITE_")]:
        monkeypatch.delenv(key)


def test_compile_command_writes_the_spec(tmp_path, capsys, no_cluster_env):
    assert cli.main(["compile", "--output", str(tmp_path / "p.yaml")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "p.yaml")
    written = (tmp_path / "p.yaml").read_text()
    assert written == dag.compile_pipeline(tmp_path / "fresh.yaml", pipeline_settings.ClusterSettings()).read_text()
    assert next(yaml.safe_load_all(written))["pipelineInfo"]["name"] == "clipcite"


def test_submit_calls_the_client_with_the_parameters(tmp_path, monkeypatch, no_cluster_env):
    monkeypatch.setenv("KFP_TOKEN", "t0ken")
    with mock.patch("kfp.Client", autospec=True) as client_cls:  # autospec: a misspelt keyword is an error
        assert (
            cli.main(
                [
                    "submit",
                    "--host",
                    "http://127.0.0.1:8888",
                    "--namespace",
                    "team-a",
                    "--experiment",
                    "pets",
                    "--workdir",
                    str(tmp_path),
                    "--param",
                    "data_uri=s3://b/pets",
                    "--param",
                    "shots=4",
                    "--param",
                    'overrides={"train.epochs": 5}',
                    "--pipeline-root",
                    "s3://kfp-artifacts/clipcite",
                ]
            )
            == 0
        )
    client_cls.assert_called_once_with(host="http://127.0.0.1:8888", namespace="team-a", existing_token="t0ken")
    call = client_cls.return_value.create_run_from_pipeline_package.call_args
    assert call.args[0] == str(tmp_path / "pipeline.yaml")
    assert call.kwargs["arguments"] == {
        "data_uri": "s3://b/pets",
        "shots": 4,
        "overrides": {"train.epochs": 5},
        "checkpoint_root": "s3://kfp-artifacts/clipcite/checkpoints",  # durable, under the S3 pipeline root
        "baseline_cache": "s3://kfp-artifacts/clipcite/baselines",
        "teacher_store": "s3://kfp-artifacts/clipcite/teachers",
    }
    assert_uploaded_spec(call.args[0], call.kwargs["arguments"], tmp_path)
    assert call.kwargs["experiment_name"] == "pets" and call.kwargs["namespace"] == "team-a"
    assert call.kwargs["pipeline_root"] == "s3://kfp-artifacts/clipcite"


def test_schedule_creates_a_recurring_run(tmp_path, monkeypatch, no_cluster_env):
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "missing"))
    with mock.patch("kfp.Client", autospec=True) as client_cls:
        client = client_cls.return_value
        client.create_experiment.return_value.experiment_id = "exp-1"
        assert (
            cli.main(
                [
                    "schedule",
                    "--host",
                    "http://127.0.0.1:8888",
                    "--cron",
                    "0 0 3 * * 1",
                    "--max-concurrency",
                    "2",
                    "--no-catchup",
                    "--workdir",
                    str(tmp_path),
                    "--param",
                    "data_uri=s3://b/pets",
                ]
            )
            == 0
        )
    client_cls.assert_called_once_with(host="http://127.0.0.1:8888", namespace=None)
    client.create_experiment.assert_called_once_with("clipcite", namespace=None)
    kwargs = client.create_recurring_run.call_args.kwargs
    assert kwargs["experiment_id"] == "exp-1" and kwargs["cron_expression"] == "0 0 3 * * 1"
    assert kwargs["max_concurrency"] == 2 and kwargs["no_catchup"] is True and kwargs["enabled"] is True
    assert kwargs["params"] == {"data_uri": "s3://b/pets"}
    assert kwargs["job_name"] == "clipcite-retrain"
    assert_uploaded_spec(kwargs["pipeline_package_path"], kwargs["params"], tmp_path)


def test_in_cluster_service_account_token_is_used(tmp_path, monkeypatch):
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    token = tmp_path / "token"
    token.write_text("sa")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    with mock.patch("kfp.Client", autospec=True) as client_cls:
        cli.make_client("http://127.0.0.1:8888")
    credentials = client_cls.call_args.kwargs["credentials"]
    assert credentials._token_path == str(token)  # kfp reads the token from this file on every request
    assert credentials._get_token() == "sa"


def structure(root: dict) -> dict:
    """Every task of a compiled spec: (its group, display name, dependencies, where each artifact input comes from)."""
    found = {}

    def walk(dag: dict, group: str) -> None:
        for name, task in dag["tasks"].items():
            sources = {}
            for key, source in task.get("inputs", {}).get("artifacts", {}).items():
                made = source.get("taskOutputArtifact") or {}
                sources[key] = f"{made.get('producerTask')}.{made.get('outputArtifactKey')}" if made else "channel"
            deps = tuple(sorted(task.get("dependentTasks", [])))
            found[name] = (group, task["taskInfo"]["name"], deps, dict(sorted(sources.items())))
            component = root["components"][task["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"], name)

    walk(root["root"]["dag"], "root")
    return found


RUN, SPLITS, CONFIG = "snapshot.mlflow_run", "sample-splits.splits", "sample-splits.run_config"
# The DAG as it compiled before candidate methods existed (pipeline.yaml of commit cbfc91f), task by task.
TODAY = {
    "cache-teacher": (
        "exit-handler-1",
        "cache-teacher",
        ("sample-splits", "snapshot"),
        {"run_config": CONFIG, "splits": SPLITS},
    ),
    "evaluate": (
        "for-loop-2",
        "evaluate",
        (),
        dict.fromkeys(("mlflow_run", "model", "run_config", "splits"), "channel"),
    ),
    "exit-handler-1": ("root", "clipcite-run", (), {}),
    "finetune": (
        "exit-handler-1",
        "finetune",
        ("cache-teacher", "sample-splits", "snapshot"),
        {"mlflow_run": RUN, "run_config": CONFIG, "splits": SPLITS, "teacher": "cache-teacher.teacher"},
    ),
    "finish-run": ("root", "finish-run", ("exit-handler-1",), {}),
    "for-loop-2": (
        "exit-handler-1",
        "eval-domains",
        ("finetune", "sample-splits", "snapshot"),
        {
            "pipelinechannel--finetune-model": "finetune.model",
            "pipelinechannel--sample-splits-run_config": CONFIG,
            "pipelinechannel--sample-splits-splits": SPLITS,
            "pipelinechannel--snapshot-mlflow_run": RUN,
        },
    ),
    "register": (
        "exit-handler-1",
        "register",
        ("finetune", "for-loop-2", "sample-splits", "snapshot"),
        {
            "mlflow_run": RUN,
            "model": "finetune.model",
            "reports": "for-loop-2.pipelinechannel--evaluate-report",
            "run_config": CONFIG,
        },
    ),
    "sample-splits": ("exit-handler-1", "sample-splits", ("snapshot",), {}),
    "snapshot": ("exit-handler-1", "snapshot", (), {}),
}


def _compiled(tmp_path, methods: tuple[str, ...]) -> dict:
    settings = pipeline_settings.ClusterSettings(methods=methods)
    path = dag.compile_pipeline(tmp_path / f"{len(methods)}.yaml", settings)
    return next(yaml.safe_load_all(path.read_text()))


@pytest.mark.parametrize("methods", [(), ("cite",)])
def test_one_method_compiles_to_todays_dag(tmp_path, methods):
    root = _compiled(tmp_path, methods)
    assert structure(root) == TODAY
    finetune = root["root"]["dag"]["tasks"]["exit-handler-1"]
    method = all_tasks(root)["finetune"]["inputs"]["parameters"].get("method")
    assert (method or {}).get("runtimeValue", {}).get("constant") == (methods[0] if methods else None)
    assert finetune  # the exit handler holds the steps, whatever the methods


def test_several_methods_fan_out_share_the_teacher_and_select_feeds_evaluate_and_register(tmp_path):
    root = _compiled(tmp_path, ("cite", "lora", "linear_probe"))
    shape = structure(root)
    names = {display: task for task, (_, display, _, _) in shape.items()}
    for method in ("cite", "lora", "linear_probe"):
        trained, scored = names[f"finetune-{method}"], names[f"validate-{method}"]
        assert shape[trained][3]["teacher"] == "cache-teacher.teacher"  # one teacher cache for every candidate
        assert all_tasks(root)[trained]["inputs"]["parameters"]["method"]["runtimeValue"]["constant"] == method
        assert shape[scored][3] == {
            "mlflow_run": RUN,
            "model": f"{trained}.model",
            "run_config": CONFIG,
            "splits": SPLITS,
        }
        assert shape["select"][3][f"{method}_model"] == f"{trained}.model"
        assert shape["select"][3][f"{method}_scores"] == f"{scored}.scores"
    # select sees models and validation scores only: no splits, no config, nothing of the eval sets
    assert set(shape["select"][3]) == {"mlflow_run"} | {
        f"{m}_{k}" for m in ("cite", "lora", "linear_probe") for k in ("model", "scores")
    }
    loop = next(task for task, (_, display, _, _) in shape.items() if display == "eval-domains")
    assert shape[loop][3]["pipelinechannel--select-model"] == "select.model"
    assert shape["register"][3]["model"] == "select.model" and shape["register"][3]["selection"] == "select.choice"


def test_methods_come_from_the_environment_and_a_wrong_name_is_named():
    settings = pipeline_settings.ClusterSettings.from_env({"CLIPCITE_METHODS": "cite, lora,linear_probe"})
    assert settings.methods == ("cite", "lora", "linear_probe")
    with pytest.raises(ValueError, match=r"\['cite', 'lorra'\]: each one of .*lora"):
        pipeline_settings.ClusterSettings(methods=("cite", "lorra"))
    with pytest.raises(ValueError, match="at most once"):
        pipeline_settings.ClusterSettings(methods=("cite", "cite"))


def test_the_methods_flag_compiles_the_candidates_and_names_a_wrong_one(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert cli.main(["compile", "--output", str(out), "--methods", "cite,lora"]) == 0
    assert {"finetune-cite", "finetune-lora", "select"} <= {
        d for _, d, _, _ in structure(next(yaml.safe_load_all(out.read_text()))).values()
    }
    with pytest.raises(SystemExit):
        cli.main(["compile", "--output", str(out), "--methods", "cite,nope"])
    assert "['cite', 'nope']: each one of" in capsys.readouterr().err
