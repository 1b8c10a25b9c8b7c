"""Preemption does not lose fine-tuning progress: checkpoints on an s3:// prefix survive a SIGKILLed finetune, the
rerun resumes from the last epoch and ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import boto3
import pytest
import torch
from safetensors.torch import load_file

from clipcite.steps import finetune, sample_splits
from tests.conftest import TINY, tiny_config
from tests.support.servers import s3_environment, s3_store

pytestmark = pytest.mark.slow  # see pyproject.toml: `make test-fast` leaves these out

SETTINGS = [*TINY, "train.epochs=8", "train.batch_size=12", "teacher.mode=online"]
BUCKET, PREFIX = "ckpt-test", "runs/run-1/finetune"


@pytest.fixture(scope="module")
def s3():
    with pytest.MonkeyPatch.context() as mp, s3_store(mp, BUCKET) as endpoint:
        yield boto3.client("s3", endpoint_url=endpoint), s3_environment(endpoint)


def _finetune_command(splits, out) -> list[str]:
    sets = [arg for s in SETTINGS for arg in ("--set", s)]
    return [
        sys.executable,
        "-m",
        "clipcite.steps.finetune",
        "--splits",
        str(splits),
        "--out",
        str(out),
        "--checkpoint-dir",
        f"s3://{BUCKET}/{PREFIX}",
        *sets,
    ]


def _saved_epoch(client) -> int | None:
    try:
        body = client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/last.pt")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return int(torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)["epoch"])


def test_killed_finetune_resumes_from_s3_to_identical_weights(s3, table, tmp_path):
    client, env = s3
    splits = tmp_path / "splits"
    sample_splits.run(str(table), str(splits), tiny_config("splits.shots=4"))

    process = subprocess.Popen(
        _finetune_command(splits, tmp_path / "model"),
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while _saved_epoch(client) is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # preempted right after its first durable checkpoint
    process.wait()
    killed_at = _saved_epoch(client)
    assert killed_at is not None and 1 <= killed_at < 8, "the process must die mid-run, after a checkpoint"
    assert not (tmp_path / "model").exists()

    command = [*_finetune_command(splits, tmp_path / "model"), "-v"]
    rerun = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    resumed = [line for line in rerun.stderr.splitlines() if "resumed from" in line]
    assert len(resumed) == 1, rerun.stderr[-2000:]
    assert killed_at <= _first_epoch(resumed[0]) < 8  # a later epoch if one more landed before the kill
    assert client.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX).get("KeyCount", 0) == 0  # removed after success

    finetune.run(str(splits), str(tmp_path / "straight"), tiny_config(*SETTINGS[3:]))
    resumed_weights = load_file(str(tmp_path / "model" / "open_clip_model.safetensors"))
    straight = load_file(str(tmp_path / "straight" / "open_clip_model.safetensors"))
    assert resumed_weights.keys() == straight.keys()
    assert all(torch.equal(resumed_weights[k], straight[k]) for k in straight)


def _first_epoch(line: str) -> int:
    return int(line.rsplit("after epoch ", 1)[1].split()[0])
