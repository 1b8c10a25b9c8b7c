"""The paper's architecture through the whole chain on CPU: ViT-B-16-quickgelu (random init, 224 px), two
optimiser steps of CITE, and a saved model that plain open_clip loads to the same logits.

The data are as small as the chain allows (4 classes, one train and one test image each) so that the test costs
what the architecture costs: four model builds, two training steps, a few 224 px forwards.
"""

from __future__ import annotations

import io
import json

import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from clipcite.data.crops import model_input
from clipcite.data.demo_folder import make_imagefolder
from clipcite.data.ingest import ingest_imagefolder
from clipcite.data.loading import EvalDataset
from clipcite.data.table import read_table
from clipcite.model.clip import load_saved
from clipcite.steps import cache_teacher, evaluate, finetune, sample_splits
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow  # see pyproject.toml: `make test-fast` leaves these out

PAPER = [
    "model.arch=ViT-B-16-quickgelu",
    "model.pretrained=",
    "splits.shots=1",
    "train.epochs=2",
    "train.batch_size=2",
    "train.lr=1e-5",
    "eval.zeroshot_baseline=false",
]


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    make_imagefolder(root / "images", num_classes=4, per_split={"train": 1, "test": 1}, domains=("photo",))
    ingest_imagefolder(str(root / "images"), str(root / "table"), layout="split/domain/class", dataset="demo")
    return root / "table"


def test_vit_b16_chain_and_plain_open_clip_reload(small_table, tmp_path):
    config = tiny_config(*PAPER)
    splits, cache, model, report = (str(tmp_path / n) for n in ("splits", "teacher", "model", "eval"))
    sample_splits.run(str(small_table), splits, config)
    cache_teacher.run(splits, cache, config)
    summary = finetune.run(splits, model, config, cache_uri=cache)
    assert summary.steps == 2 and summary.images == 2  # 1 shot x 2 base classes, batch 2, 2 epochs
    curves = [json.loads(line) for line in (tmp_path / "model" / "curves.jsonl").read_text().splitlines()]
    assert len(curves) == 2 and {"dva", "scl", "vld"} <= set(curves[0])
    assert all(torch.isfinite(torch.tensor(c["total"])) for c in curves)
    body = evaluate.run(model, splits, report, config)
    assert {"base", "new", "hm"} <= set(body.domains["photo"]["finetuned"])

    ours, meta = load_saved(tmp_path / "model")
    plain = open_clip.create_model(f"local-dir:{tmp_path / 'model'}").eval()
    preprocess = image_transform_v2(PreprocessCfg(**plain.visual.preprocess_cfg), is_train=False)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'model'}")
    rows = read_table(str(tmp_path / "splits" / "eval" / "photo-base")).to_pylist()
    # the loader's uint8 batch normalised at once equals open_clip's transform image by image, bit for bit
    ours_pixels = torch.stack([EvalDataset(rows, ours.preprocess_cfg)[i][1] for i in range(len(rows))])
    ours_images = model_input(ours_pixels, ours.preprocess_cfg, "cpu")
    plain_images = torch.stack([preprocess(Image.open(io.BytesIO(r["image"])).convert("RGB")) for r in rows])
    assert torch.equal(ours_images, plain_images)
    prompts = [meta.template.format(n) for n in meta.classnames]
    with torch.no_grad():
        text = ours.model.eval().encode_text(ours.tokenizer(prompts), normalize=True)
        ours_logits = ours.model.encode_image(ours_images, normalize=True) @ text.T
        text = plain.encode_text(tokenizer(prompts), normalize=True)
        plain_logits = plain.encode_image(plain_images, normalize=True) @ text.T
    assert torch.equal(ours_logits, plain_logits)
