"""The image tensors the models see: evaluation views equal open_clip's own transform, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.transform import image_transform
from PIL import Image

from clipcite.crops import eval_view, to_tensor

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# odd, even, portrait, landscape, square, and smaller than the crop on one or both sides
SIZES = [(640, 480), (480, 640), (500, 375), (33, 17), (17, 40), (301, 299), (224, 224), (20, 20), (225, 31)]


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + width * 1000 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _cfg(size: int, resize_mode: str, interpolation: str) -> dict:
    # as a saved model's clipcite.json holds it: JSON lists, not tuples
    return {
        "size": [size, size],
        "mode": "RGB",
        "mean": list(MEAN),
        "std": list(STD),
        "interpolation": interpolation,
        "resize_mode": resize_mode,
        "fill_color": 0,
    }


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [32, 224])
def test_eval_view_equals_open_clip_transform(resize_mode, interpolation, size):
    reference = image_transform(
        size, is_train=False, mean=MEAN, std=STD, resize_mode=resize_mode, interpolation=interpolation
    )
    cfg = _cfg(size, resize_mode, interpolation)
    for width, height in SIZES:
        image = _image(width, height)
        ours, theirs = eval_view(image, cfg), reference(image)
        assert ours.shape == (3, size, size)
        assert torch.equal(ours, theirs), f"{width}x{height} {resize_mode}/{interpolation}/{size}"


def test_shortest_resize_truncates_and_centre_crop_rounds():
    """640x480 at 224: torchvision resizes to 298x224 (int(224 * 640 / 480) = 298, not round() = 299), then crops
    at left = round((298 - 224) / 2) = 37."""
    image = _image(640, 480)
    expected = image.resize((298, 224), Image.BICUBIC).crop((37, 0, 37 + 224, 224))
    assert torch.equal(eval_view(image, _cfg(224, "shortest", "bicubic")), to_tensor(expected, MEAN, STD))


def test_longest_pads_with_fill_colour():
    """``longest`` fits the long side and pads the short one: a 64x32 image at 32 px leaves 8 rows of fill above and
    below (fill 0, normalised)."""
    out = eval_view(_image(64, 32), _cfg(32, "longest", "bicubic"))
    fill = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(out[:, :8, :], fill.view(3, 1, 1).expand(3, 8, 32))
    assert torch.allclose(out[:, -8:, :], fill.view(3, 1, 1).expand(3, 8, 32))
    assert not torch.allclose(out[:, 8:24, :], fill.view(3, 1, 1).expand(3, 16, 32))
