"""The CPU-only steps start without torch and open_clip (importing them costs a step ~5 s and 1.2 GB)."""

import hashlib
import json
import subprocess
import sys

import pytest

from clipcite.model.identity import checkpoint_identity
from tests.conftest import TINY

CPU_ONLY = [
    "clipcite.steps.snapshot",
    "clipcite.steps.sample_splits",
    "clipcite.steps.register",
    "clipcite.steps.select",
]


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


def test_the_snapshot_identifies_the_base_model_without_torch_and_as_load_model_does(table, tmp_path):
    """The snapshot step runs (not only imports) without torch: the model identity comes from file hashes and
    open_clip's config files, and equals what loading the model reports (cache-teacher checks the two agree)."""
    from clipcite.model.clip import load_model

    checkpoint = tmp_path / "weights.safetensors"
    checkpoint.write_bytes(b"not read by the identity, only hashed")
    configs = [TINY, [*TINY, "model.arch=ViT-B-16-quickgelu"], [*TINY, f"model.pretrained={checkpoint}"]]
    code = (
        "import sys, json; from clipcite.config import load_config; from clipcite.steps.snapshot import run\n"
        f"ids = [run({str(table)!r}, config=load_config(None, c), tracking_uri='off').model_identity"
        f" for c in {configs!r}]\n"
        "print(json.dumps([ids, sorted({'torch', 'open_clip'} & set(sys.modules))]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    (tiny, vit, file), loaded = json.loads(out)
    assert loaded == []
    assert tiny == load_model("clipcite-tiny").identity == "random:clipcite-tiny:0"
    assert vit == "random:ViT-B-16-quickgelu:0"  # an open_clip name, found among its config files
    assert file == "sha256:" + hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="unknown architecture 'ViT-Q-99'"):
        checkpoint_identity("ViT-Q-99")
