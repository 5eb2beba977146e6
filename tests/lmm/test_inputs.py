"""Anomaly-map and pixel validation: resize rule and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from myriad.errors import MyriadError  # noqa: E402
from myriad.lmm.config import mini_config, paper_config  # noqa: E402
from myriad.lmm.errors import AnomalyMapError, InputError  # noqa: E402
from myriad.lmm.inputs import check_pixels, prepare_maps, preprocess_images  # noqa: E402


def test_maps_of_any_layout_become_b1ss():
    assert prepare_maps(torch.rand(224, 224), 1, 224).shape == (1, 1, 224, 224)
    assert prepare_maps(torch.rand(3, 224, 224), 3, 224).shape == (3, 1, 224, 224)
    assert prepare_maps(np.random.rand(2, 1, 224, 224), 2, 224).dtype == torch.float32
    assert prepare_maps([np.random.rand(50, 60).astype(np.float32)] * 2, 2, 224).shape == (2, 1, 224, 224)


def test_maps_are_resized_bilinearly_not_rescaled():
    small = torch.full((1, 1, 16, 16), 0.25, dtype=torch.float16)
    out = prepare_maps(small, 1, 224)
    assert out.shape == (1, 1, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full_like(out, 0.25))
    big = torch.rand(1, 1, 224, 224) * 7  # values are never min-max scaled
    torch.testing.assert_close(prepare_maps(big, 1, 224), big)


@pytest.mark.parametrize(
    ("maps", "match"),
    [
        (torch.ones(224, 224, dtype=torch.long), "floating-point"),
        (np.ones((224, 224), dtype=np.uint8), "floating-point"),
        (torch.rand(1, 2, 224, 224), "one channel"),
        (torch.rand(224), "1-D"),
        (torch.rand(1, 1, 1, 224, 224), "5-D"),
        (torch.full((224, 224), float("nan")), "NaN"),
        (torch.rand(2, 224, 224), "expected 1 map"),
        (None, "required"),
        ("map.png", "torch tensor"),
    ],
)
def test_bad_maps_raise_clear_errors(maps, match):
    with pytest.raises(AnomalyMapError, match=match) as info:
        prepare_maps(maps, 1, 224)
    assert isinstance(info.value, MyriadError)


def test_pixels_checked():
    assert check_pixels(torch.rand(3, 28, 28), 28).shape == (1, 3, 28, 28)
    with pytest.raises(InputError, match="B x 3 x 224 x 224"):
        check_pixels(torch.rand(1, 3, 100, 100), 224)
    with pytest.raises(InputError, match="float"):
        check_pixels(torch.zeros(1, 3, 224, 224, dtype=torch.uint8), 224)
    with pytest.raises(InputError, match="preprocess"):
        check_pixels(np.zeros((224, 224, 3)), 224)


def test_preprocess_resizes_shorter_side_and_center_crops():
    image = np.zeros((100, 300, 3), dtype=np.uint8)
    image[:, 140:160] = 255  # a white stripe in the middle survives the crop
    batch = preprocess_images([image], paper_config().vision)
    assert batch.shape == (1, 3, 224, 224)
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
    pixels = batch[0] * std + mean
    assert float(pixels[:, :, 112].mean()) > 0.9 and float(pixels[:, :, 5].mean()) < 0.05
    half = preprocess_images([image], mini_config().vision)
    assert float(half.min()) >= -1.0 - 1e-5 and float(half.max()) <= 1.0 + 1e-5
