"""Data parallelism: two torchrun ranks (gloo, CPU) against one process on the same data, seed and global
batch; resume across world sizes; the launch hooks; the pipeline spec for several GPUs.

The two-rank side runs once per module (tests/support/distributed_jobs.py, one ``torchrun --standalone`` launch through
:func:`clipcite.training.distributed.launch`): ranks take seconds to start on a busy machine.
"""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from clipcite import cli
from clipcite.data.prompts import prompts_for
from clipcite.data.table import read_table
from clipcite.evaluation.predict import predict
from clipcite.model.clip import load_model
from clipcite.records import TrainSummary
from clipcite.steps import cache_teacher, evaluate, finetune
from clipcite.steps.sample_splits import run as sample_splits
from clipcite.training import distributed
from tests.conftest import tiny_config
from tests.support import distributed_jobs as jobs

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def runs(table, tmp_path_factory):
    """(one-process results, two-rank results, work folder)."""
    work = tmp_path_factory.mktemp("ranks")
    sample_splits(str(table), str(work / "splits"), tiny_config("splits.shots=4"))
    rows = read_table(str(work / "splits" / "train")).to_pylist()
    names = sorted({(r["label"], r["classname"]) for r in rows})
    prompts = prompts_for("a photo of a {}.", [n for _, n in names])
    assert len(rows) == 12  # 3 classes x 4 shots: batches of 5, 5, 2
    cache = jobs.in_float64(jobs.make_cache(rows, prompts))
    with jobs.float64(), pytest.raises(jobs.Interrupt):  # the one-process run the two ranks resume
        jobs.train(rows, prompts, jobs.CITE, cache=cache, checkpoint_dir=work / "killed-one", stop=True)

    loopback = {"GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME")}
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # the ranks talk over loopback only
    try:
        two = distributed.launch(jobs.rank_jobs, rows, prompts, cache, str(work), nproc=2)
    finally:
        os.environ.pop("GLOO_SOCKET_IFNAME")
        os.environ.update({k: v for k, v in loopback.items() if v is not None})

    # torchrun gives each rank one intra-op thread (OMP_NUM_THREADS=1); the one-process run must use as many, or
    # its float32 matmuls reduce in another order and "bit for bit" compares thread counts, not the sharding.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = _one_process(rows, prompts, cache, work)
    finally:
        torch.set_num_threads(threads)
    return one, two, work


def _one_process(rows, prompts, cache, work) -> dict:
    with jobs.float64():
        one = {
            "gradients": {case: jobs.first_step_gradients(prompts, case) for case in jobs.GRADIENT_CASES},
            "cite": jobs.train(rows, prompts, jobs.CITE, cache=cache),
            "flyp": jobs.train(rows, prompts, jobs.FLYP),
            "resumed_from_two": jobs.train(rows, prompts, jobs.CITE, cache=cache, checkpoint_dir=work / "killed-two"),
        }
    one["cache"] = jobs.make_cache(rows, prompts).image
    one["predict"] = predict(load_model("clipcite-tiny", ""), rows, prompts, batch_size=5)
    splits, steps = str(work / "splits"), work / "one"
    cache_teacher.run(splits, str(steps / "teacher"), jobs.step_config())
    finetune.run(splits, str(steps / "model"), jobs.step_config(jobs.GRID), cache_uri=str(steps / "teacher"))
    evaluate.run(str(steps / "model"), splits, str(steps / "eval"), jobs.step_config())
    return one


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= 1e-5, f"max abs weight difference {worst}"


@pytest.mark.parametrize("method", ["cite", "flyp"])
def test_two_ranks_give_every_loss_term_and_the_weights_of_one_process(runs, method):
    one, two, _ = runs
    assert two["world_size"] == 2
    (weights_one, logged_one), (weights_two, logged_two) = one[method], two[method]
    terms = {"cite": {"dva", "scl", "vld", "total"}, "flyp": {"clip", "total"}}[method]
    assert [s for s, _ in logged_one] == [s for s, _ in logged_two] == list(range(1, len(logged_one) + 1))
    assert len(logged_one) == 3 * getattr(jobs, method.upper()).epochs
    for (step, a), (_, b) in zip(logged_one, logged_two, strict=True):
        assert terms <= set(a)
        for term in terms:
            assert b[term] == pytest.approx(a[term], rel=1e-5, abs=1e-7), (step, term)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), step
    moved = max(
        float((weights_one[k] - v).abs().max()) for k, v in load_model("clipcite-tiny", "").model.state_dict().items()
    )
    assert moved > 1e-3  # training changed the weights, so equal weights mean equal updates
    assert_same_weights(weights_one, weights_two)


@pytest.mark.parametrize("case", jobs.GRADIENT_CASES)
def test_two_ranks_average_to_the_one_process_gradient(runs, case):
    """DDP averages the ranks' gradients; the gather's backward sums the ranks' copies of the global loss, so the
    average is the one-process gradient for the encoders (through the gathered features and the text encoded on
    every rank) and for the head W (outside DDP, the full gradient on every rank)."""
    one, two = runs[0]["gradients"][case], runs[1]["gradients"][case]
    method = case.partition(":")[0]
    assert one.keys() == two.keys() and "visual.conv1.weight" in one and ("head" in one) == (method != "flyp")
    assert ("transformer.resblocks.0.mlp.c_fc.weight" in one) == (method != "ce")
    for name, grad in one.items():
        assert float(grad.abs().max()) > 0, name
        assert torch.allclose(two[name], grad, rtol=1e-9, atol=1e-12 * float(grad.abs().max())), name


def test_teacher_cache_and_predictions_are_those_of_one_process(runs):
    one, two, _ = runs
    assert torch.equal(one["cache"], two["cache"])  # same batches, same hardware: bit for bit
    for a, b in zip(one["predict"], two["predict"], strict=True):
        assert torch.equal(a, b) and len(a) == 12


def test_a_run_killed_under_one_world_size_resumes_under_the_other(runs):
    one, two, _ = runs
    for resumed in (one["resumed_from_two"], two["resumed_from_one"]):
        weights, logged = resumed
        assert [s for s, _ in logged] == [7, 8, 9]  # resumed after epoch 2's checkpoint: only epoch 3 ran again
        assert_same_weights(one["cite"][0], weights)


def test_steps_under_two_ranks_write_what_one_process_writes(runs):
    _, _, work = runs
    one, two = work / "one", work / "two"
    for name in ("teacher.safetensors", "teacher.json"):
        assert (one / "teacher" / name).read_bytes() == (two / "teacher" / name).read_bytes(), name
    model_one = load_file(str(next((one / "model").glob("*.safetensors"))))
    assert_same_weights(model_one, load_file(str(next((two / "model").glob("*.safetensors")))))
    summary = [json.loads((d / "model" / "train_summary.json").read_text()) for d in (one, two)]
    assert summary[0]["steps"] == summary[1]["steps"] == 3 and summary[0]["images"] == 12
    assert summary[0]["alpha_grid"] == summary[1]["alpha_grid"]  # the grid's validation passes, shared over ranks
    assert summary[0]["alpha_grid"]["val_images"] == 12  # 3 base classes x 2 val images x 2 domains
    metrics = [json.loads((d / "eval" / "metrics.json").read_text()) for d in (one, two)]
    for m in metrics:
        del m["model"]  # the folder it read
    assert metrics[0] == metrics[1]
    assert not list(two.glob("*.checkpoints")) and not list((two / "model").glob("*.pt"))


def test_rank_batches_split_each_global_batch_in_order(monkeypatch):
    batches = [[(0, i) for i in (4, 1, 7, 0, 9)], [(0, 2), (0, 3)]]
    parts = {}
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        parts[rank] = list(distributed.RankBatches(batches))
    assert parts[0] == [[(0, 4), (0, 1)], [(0, 2)]] and parts[1] == [[(0, 7), (0, 0), (0, 9)], [(0, 3)]]
    assert [a + b for a, b in zip(parts[0], parts[1], strict=True)] == batches  # gathered in rank order
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(ValueError, match="a batch of 2 image.*3 ranks.*train.batch_size"):
        list(distributed.RankBatches(batches))
    assert distributed.shard_batches(7, 2) == [[0, 1], [4, 5]] if distributed.rank() == 0 else True


# What a stubbed finetune.run hands the CLI (which prints it).
SUMMARY = TrainSummary(
    method="ce",
    skipped_steps=0,
    steps=1,
    epochs=1,
    alpha=1.0,
    trainable_parameters=1,
    logit_scale=100.0,
    batch_size=4,
    images=4,
    classes=2,
    images_per_second=1.0,
    seconds=1.0,
    device="cpu",
)


def test_steps_and_the_cli_launch_torchrun_when_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed, "launch", lambda fn, *a, nproc, **kw: calls.append((fn, nproc)) or {})
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv(distributed.NPROC_ENV, "4")
    config = tiny_config()
    cache_teacher.run("splits", "out", config)
    finetune.run("splits", "out", config)
    evaluate.run("model", "splits", "out", config)
    assert calls == [(cache_teacher._ranks_run, 4), (finetune.run, 4), (evaluate.run, 4)]
    monkeypatch.setenv("WORLD_SIZE", "4")  # a rank already: never launches again
    assert distributed.requested_ranks() == 1
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv(distributed.NPROC_ENV, "two")
    with pytest.raises(ValueError, match="CLIPCITE_NPROC_PER_NODE='two'"):
        distributed.requested_ranks()

    monkeypatch.setenv(distributed.NPROC_ENV, "1")  # restored after the test whatever the CLI sets
    seen = []
    monkeypatch.setattr(finetune, "run", lambda *args, **kwargs: seen.append(args[:2]) or SUMMARY)
    assert cli.main(["finetune", "--splits", "s", "--nproc-per-node", "3", "--out", "o"]) == 0
    assert seen == [("s", "o")] and os.environ[distributed.NPROC_ENV] == "3"
    cli.main(["finetune", "--splits", "s", "--out", "o", "--nproc-per-node=2"])
    assert os.environ[distributed.NPROC_ENV] == "2"
    assert cli.main(["finetune", "--splits", "s", "--out", "o", "--nproc-per-node", "0"]) == 2  # a one-line error


@distributed.relaunch_in_ranks(local_only=("log_fn",))
def _step(uri, config=None, *, log_fn=None, added=""):
    return ("ran", uri, config, added)


def test_a_relaunched_step_takes_every_argument_to_the_ranks_but_the_local_ones(monkeypatch, caplog):
    """A keyword added to a step's ``run`` reaches the ranks without being named anywhere else."""
    calls = []
    monkeypatch.setattr(distributed, "launch", lambda fn, *a, nproc, **kw: calls.append((fn, a, nproc, kw)) or "rank 0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv(distributed.NPROC_ENV, "1")
    assert _step("u", log_fn=print, added="x") == ("ran", "u", None, "x")  # one rank: the function as written
    assert calls == []
    monkeypatch.setenv(distributed.NPROC_ENV, "2")
    with caplog.at_level("WARNING", logger=distributed.__name__):
        assert _step("u", {"k": 1}, log_fn=print, added="x") == "rank 0"
    assert calls == [(_step, ("u", {"k": 1}), 2, {"added": "x"})]  # launched by name: the ranks run _step itself
    assert "log_fn stays in this process" in caplog.text
    with pytest.raises(TypeError, match="argument 'added' cannot travel to the ranks"):
        _step("u", added=lambda: None)
    with pytest.raises(TypeError, match="local_only 'nope' must be a parameter with a default"):
        distributed.relaunch_in_ranks(local_only=("nope",))(_step.__wrapped__)
    monkeypatch.setenv("WORLD_SIZE", "2")  # inside a rank: never relaunches
    assert _step("u", added="y") == ("ran", "u", None, "y")


def test_a_relaunched_step_runs_in_two_gloo_ranks_with_its_keywords(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv(distributed.NPROC_ENV, "2")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # the ranks talk over loopback only
    result = jobs.echo_in_ranks([1, 2], log_fn=print, added="travels")
    assert result == {"world_size": 2, "value": [1, 2], "added": "travels", "log_fn": None}


def test_spec_for_four_gpus_requests_four_launches_four_and_sizes_shm(tmp_path):
    from clipcite.pipeline import dag
    from clipcite.pipeline import settings as pipeline_settings

    settings = pipeline_settings.ClusterSettings.from_env({"CLIPCITE_GPU_LIMIT": "4"})
    root, platform = yaml.safe_load_all(dag.compile_pipeline(tmp_path / "p.yaml", settings).read_text())
    executors = root["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for step in ("cache-teacher", "finetune", "evaluate"):
        container = executors[f"exec-{step}"]["container"]
        assert container["resources"]["accelerator"]["resourceCount"] == "4"
        assert {"name": distributed.NPROC_ENV, "value": "4"} in container["env"]
        (shm,) = k8s[f"exec-{step}"]["emptyDirMounts"]
        assert shm["mountPath"] == "/dev/shm" and shm["sizeLimit"] == "64Gi"  # 16Gi per rank
    for step in ("snapshot", "sample-splits", "register"):
        assert distributed.NPROC_ENV not in json.dumps(executors[f"exec-{step}"])
    one = pipeline_settings.ClusterSettings()
    assert (one.gpu_limit, one.shm()) == (1, "16Gi")  # one GPU: the committed spec, no torchrun


def test_a_step_run_as_python_dash_m_is_imported_by_its_name_in_the_ranks(monkeypatch):
    """Under ``python -m clipcite.steps.finetune`` the step's run() lives in ``__main__``; a rank imports the
    module by the name it was run as, since its own ``__main__`` is the rank's entry point."""
    import sys
    import types

    from clipcite.training import distributed

    def run():  # what a step's run() looks like when its module is the program
        return None

    run.__module__ = "__main__"
    program = types.ModuleType("__main__")
    program.__spec__ = types.SimpleNamespace(name="clipcite.steps.finetune")
    monkeypatch.setitem(sys.modules, "__main__", program)
    assert distributed._importable_module(run) == "clipcite.steps.finetune"
    assert distributed._importable_module(distributed.launch) == "clipcite.training.distributed"
    program.__spec__ = None  # a script: nothing for a rank to import
    with pytest.raises(ValueError, match="run it with python -m"):
        distributed._importable_module(run)
