"""The CPU-only steps start without torch and open_clip (issue 11: every step used to pay ~5 s and 1.2 GB for them)."""

import json
import subprocess
import sys

import pytest

CPU_ONLY = ["clipcite.steps.snapshot", "clipcite.steps.sample_splits", "clipcite.steps.register"]


@pytest.mark.parametrize("module", CPU_ONLY)
def test_cpu_only_step_imports_neither_torch_nor_open_clip(module):
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    loaded = set(
        json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    )
    assert not {"torch", "open_clip", "torchvision"} & loaded, (
        f"{module} imports {sorted({'torch', 'open_clip', 'torchvision'} & loaded)}"
    )


def test_the_config_loads_without_torch():
    code = "import sys; from clipcite.config import load_config; load_config(None, []); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
