"""One list of methods: ``clipcite.train_params.REGISTRY``. Everything else that names the methods (the pipeline's
per-method inputs, the bench rows, the docs' table) is derived from it or held equal to it here, and no other file
of the package or the benches writes the methods out as a list of its own."""

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import toyworld_methods
from clipcite.pipeline.components.evaluate import evaluate
from clipcite.pipeline.components.select import select
from clipcite.train_params import ENSEMBLE_METHODS, METHODS, REGISTRY, FitParams
from clipcite.training import methods

ROOT = Path(__file__).resolve().parents[3]


def test_each_method_resolves_to_a_module_with_a_trainer():
    assert tuple(REGISTRY) == METHODS and set(ENSEMBLE_METHODS) == {m for m, e in REGISTRY.items() if e.ensemble}
    for name, method in REGISTRY.items():
        assert (ROOT / "clipcite" / "training" / "methods" / f"{method.module}.py").is_file(), name
        assert callable(methods.module(name).trainer), name
        assert method.summary and set(method.cite_terms) <= set(FitParams(method=name).loss_weights())
    with pytest.raises(KeyError):
        methods.module("sgd")


def test_the_config_and_the_registry_load_without_torch():
    code = "import sys, clipcite.config, clipcite.train_params; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0


def _inputs(component) -> set[str]:
    return set(inspect.signature(component.python_func).parameters)


@pytest.mark.parametrize("component, kinds", [(select, ("model", "scores")), (evaluate, ("model",))])
def test_the_components_have_one_input_per_method_and_kind(component, kinds):
    """KFP needs the per-method inputs written out in the signature: a method added to the registry and not to the
    component (or left in the component after leaving the registry) fails here."""
    per_method = {name for name in _inputs(component) if re.fullmatch(rf"\w+_(?:{'|'.join(kinds)})", name)}
    assert per_method == {f"{method}_{kind}" for method in METHODS for kind in kinds}


def test_the_bench_rows_train_registry_methods_and_cover_every_method_and_module():
    rows = toyworld_methods.METHODS
    assert {toyworld_methods.row_method(row) for row in rows} == set(METHODS)
    assert list(toyworld_methods.METHOD_ROWS) == list(METHODS)
    smoke = {REGISTRY[toyworld_methods.row_method(row)].module for row in toyworld_methods.SMOKE_METHODS}
    assert smoke == {method.module for method in REGISTRY.values()}  # --smoke runs every method module
    for candidates in toyworld_methods.CANDIDATE_SETS.values():
        assert set(candidates) <= set(rows)


def test_the_docs_table_lists_every_method():
    (row,) = [
        line for line in (ROOT / "docs" / "configuration.md").read_text().splitlines() if "| `train.method`" in line
    ]
    _, _, default, meaning, _ = row.split("|")
    named = re.findall(r"`(\w+)`", default + meaning.split(";")[0])
    assert sorted(named) == sorted(METHODS)


def _method_lists(path: Path) -> list[int]:
    """Lines of ``path`` holding a literal tuple, list, set or dict (by its keys) of two or more method names and
    nothing else."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [key for key in node.keys if key is not None]
        else:
            continue
        names = [item.value for item in items if isinstance(item, ast.Constant)]
        if len(names) == len(items) >= 2 and all(name in REGISTRY for name in names):
            found.append(node.lineno)
    return found


def test_no_file_but_the_registry_writes_the_methods_out():
    files = [*(ROOT / "clipcite").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    assert len(files) > 50
    registry = ROOT / "clipcite" / "train_params.py"
    found = {str(p.relative_to(ROOT)): lines for p in files if p != registry and (lines := _method_lists(p))}
    assert found == {}, f"a list of method names outside clipcite/train_params.py REGISTRY: {found}"
    assert _method_lists(registry)  # the check sees the registry's own table


def test_the_loop_names_no_method():
    """fit asks the method's trainer (zeroshot trains nothing by its own module), it never tests a name."""
    tree = ast.parse((ROOT / "clipcite" / "training" / "loop.py").read_text())
    assert not [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in REGISTRY]
