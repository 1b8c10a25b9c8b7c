"""The image tensors the models see: evaluation views equal open_clip's own transform, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.transform import image_transform
from PIL import Image

from clipcite.data.crops import (
    _eval_transform,
    crop_params,
    eval_pixels,
    eval_view,
    model_input,
    pixels,
    to_tensor,
    train_pixels,
)

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


def test_train_pixels_are_torchvisions_resized_crop():
    """A replayed crop box goes through the same crop + resize as torchvision's RandomResizedCrop."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    image = _image(97, 61)
    cfg = _cfg(32, "shortest", "bicubic")
    for box in [(0, 0, 61, 97), (5, 11, 40, 23), (60, 96, 1, 1)]:
        top, left, h, w = box
        expected = F.resized_crop(image, top, left, h, w, [32, 32], InterpolationMode.BICUBIC)
        assert torch.equal(train_pixels(image, box, cfg), pixels(expected))


def test_crop_params_fall_back_like_torchvision():
    """When no sampled box fits (10 tries), both take the largest centre crop within the ratio range."""
    from torchvision.transforms import RandomResizedCrop

    for width, height in [(1000, 10), (10, 1000), (300, 200)]:
        ours = crop_params(width, height, seed=1, image_id="x", epoch=0, scale=(1.0, 1.0), ratio=(3 / 4, 4 / 3))
        theirs = RandomResizedCrop.get_params(_image(width, height), scale=(1.0, 1.0), ratio=(3 / 4, 4 / 3))
        assert ours == tuple(theirs)
    # 3:2 is outside 3/4..4/3, so no full-area box fits: the fallback crops the centre to 4:3, left (300 - 267) // 2
    assert crop_params(300, 200, 1, "x", 0, scale=(1.0, 1.0)) == (0, 16, 200, 267)


def _float_path(image: Image.Image) -> torch.Tensor:
    """The per-image float tensor as clipcite made it before batches were normalised (kept here literally)."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    return (tensor - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def test_a_normalised_uint8_batch_equals_the_per_image_transforms_bit_for_bit():
    """Loaders ship uint8 pixels and the step normalises the batch: the same numbers as open_clip's whole transform
    (eval) and the old float crop (train), image by image."""
    cfg = _cfg(32, "shortest", "bicubic")
    reference = image_transform(32, is_train=False, mean=MEAN, std=STD)
    images = [_image(w, h) for w, h in SIZES]
    batch = torch.stack([eval_pixels(image, cfg) for image in images])
    assert batch.dtype == torch.uint8
    assert torch.equal(model_input(batch, cfg, "cpu"), torch.stack([reference(image) for image in images]))
    box = (1, 2, 15, 13)
    crops = torch.stack([train_pixels(image, box, cfg) for image in images])
    expected = [_float_path(image.crop((2, 1, 15, 16)).resize((32, 32), Image.BICUBIC)) for image in images]
    assert torch.equal(model_input(crops, cfg, "cpu"), torch.stack(expected))


def test_an_open_clip_transform_of_another_shape_is_refused(monkeypatch):
    """The batch normalisation finishes open_clip's transform only if its tail is ToTensor, Normalize(mean, std)."""
    import open_clip.transform
    from torchvision.transforms import CenterCrop, Compose, ToTensor

    monkeypatch.setattr(open_clip.transform, "image_transform_v2", lambda *a, **k: Compose([CenterCrop(8), ToTensor()]))
    _eval_transform.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="no longer ends in ToTensor, Normalize"):
            eval_pixels(_image(20, 20), _cfg(8, "shortest", "bicubic"))
    finally:
        _eval_transform.cache_clear()


def test_normalize_takes_uint8_pixels_only_and_arrays_as_the_renderer_makes_them():
    """A float batch would be divided by 255 a second time: refused. The toy world's renderer hands HxWx3 uint8
    arrays to to_tensor (pretraining): the old float formula's numbers, contiguous like torchvision's."""
    cfg = _cfg(32, "shortest", "bicubic")
    with pytest.raises(TypeError, match="uint8"):
        model_input(torch.zeros(1, 3, 32, 32), cfg, "cpu")
    array = np.asarray(_image(20, 12))
    out = to_tensor(array, MEAN, STD)
    assert out.is_contiguous() and torch.equal(out, _float_path(Image.fromarray(array)))
    assert eval_view(_image(40, 30), cfg).is_contiguous()
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        to_tensor(array.astype(np.float32), MEAN, STD)
