"""``clipcite aggregate`` (clipcite/steps/aggregate.py): mean, sample standard deviation and count over seeds, the HM
of the mean Base and New, and evaluations that are not seeds of one run refused unless --allow-mixed."""

import dataclasses
import json
import math

import pytest

from clipcite.cli import main
from clipcite.records import EvalReport
from tests.support.records import report


def _metrics_file(folder, base: float, new: float):
    """An evaluate output with one domain and known numbers (the per-domain and mean rows agree: one domain)."""
    folder.mkdir()
    row = {"base": base, "new": new, "hm": 2 * base * new / (base + new)}
    report(domains={"photo": {"finetuned": row}}, mean={"finetuned": row}).write(folder)
    return str(folder)


def _change(folder, **fields) -> None:
    """Rewrite the evaluate output in ``folder`` with ``fields`` changed."""
    dataclasses.replace(EvalReport.read(folder), **fields).write(folder)


def test_aggregate_gives_mean_sample_std_and_count_over_two_seeds(tmp_path):
    seeds = [_metrics_file(tmp_path / "seed1", 80.0, 60.0), _metrics_file(tmp_path / "seed2", 76.0, 50.0)]
    assert main(["aggregate", *seeds, "--out", str(tmp_path / "agg.json")]) == 0
    agg = json.loads((tmp_path / "agg.json").read_text())
    assert agg["runs"] == seeds
    for rows in (agg["mean"]["finetuned"], agg["domains"]["photo"]["finetuned"]):
        # sample standard deviation (n - 1): |a - b| / sqrt(2) for two seeds
        assert rows["base"] == {"mean": 78.0, "std": pytest.approx(4 / math.sqrt(2), rel=1e-12), "n": 2}
        assert rows["new"] == {"mean": 55.0, "std": pytest.approx(10 / math.sqrt(2), rel=1e-12), "n": 2}
        # hm: the HM of the mean Base and mean New (method.md), not the mean of the per-seed HMs
        assert rows["hm"]["mean"] == pytest.approx(2 * 78.0 * 55.0 / (78.0 + 55.0), rel=1e-12)
        per_seed = [2 * 80 * 60 / 140, 2 * 76 * 50 / 126]
        assert rows["hm"]["mean_of_runs"] == pytest.approx(sum(per_seed) / 2, rel=1e-12)
        assert rows["hm"]["std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / math.sqrt(2), rel=1e-12)
        assert rows["hm"]["n"] == 2


def test_aggregate_refuses_evaluations_of_different_runs_without_allow_mixed(tmp_path, capsys):
    runs = [_metrics_file(tmp_path / "a", 80.0, 60.0), _metrics_file(tmp_path / "b", 76.0, 50.0)]
    for folder, method in zip(runs, ("cite", "ce"), strict=True):
        _change(folder, method=method, seed=1)
    assert main(["aggregate", *runs, "--out", str(tmp_path / "agg.json")]) == 2
    err = capsys.readouterr().err
    assert "not seeds of one run (method: cite, ce" in err and "--allow-mixed" in err
    assert not (tmp_path / "agg.json").exists()
    assert main(["aggregate", *runs, "--out", str(tmp_path / "agg.json"), "--allow-mixed"]) == 0


def test_aggregate_takes_seeds_that_chose_different_alphas_from_one_grid(tmp_path, capsys):
    runs = [_metrics_file(tmp_path / "a", 80.0, 60.0), _metrics_file(tmp_path / "b", 76.0, 50.0)]
    for folder, alpha, grid in zip(runs, (0.5, 0.7), ([0.5, 0.7], [0.5, 0.7]), strict=True):
        _change(folder, alpha=alpha, alpha_grid=tuple(grid))
    assert main(["aggregate", *runs, "--out", str(tmp_path / "agg.json")]) == 0  # one recipe: alpha from one grid
    _change(runs[1], alpha_grid=(0.5, 1.0))
    assert main(["aggregate", *runs, "--out", str(tmp_path / "agg2.json")]) == 2
    assert "alpha: {'alpha_grid': [0.5, 0.7]}, {'alpha_grid': [0.5, 1.0]}" in capsys.readouterr().err
