"""Patch features and map post-processing: shapes, aggregation, BatchNorm folding, blur."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from myriad_experts_patchcore.features import (
    PatchFeatureExtractor,
    aggregate,
    feature_dim,
    fold_batchnorm,
    local_average,
    to_patch_rows,
)
from myriad_experts_patchcore.scoring import anomaly_maps, gaussian_blur, gaussian_kernel1d, upsample_and_blur


def test_local_average_is_a_3x3_mean_with_zero_padding() -> None:
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    out = local_average(x)
    padded = F.pad(x, (1, 1, 1, 1))
    manual = sum(padded[..., dy : dy + 5, dx : dx + 6] for dy in range(3) for dx in range(3)) / 9
    torch.testing.assert_close(out, manual)


def test_aggregate_concat_and_pool_shapes() -> None:
    shallow, deep = torch.randn(2, 40, 8, 8), torch.randn(2, 112, 4, 4)
    concat = aggregate([shallow, deep], "concat")
    assert concat.shape == (2, 152, 8, 8) and feature_dim([40, 112], "concat", 1024) == 152
    # the deeper stage is averaged, then bilinearly resized to the shallow grid
    expected_deep = F.interpolate(local_average(deep), size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(concat[:, 40:], expected_deep)
    torch.testing.assert_close(concat[:, :40], local_average(shallow))
    pooled = aggregate([shallow, deep], "pool", embed_dim=64)
    assert pooled.shape == (2, 64, 8, 8) and feature_dim([40, 112], "pool", 64) == 64
    rows = to_patch_rows(concat)
    assert rows.shape == (2 * 64, 152) and rows.dtype == np.float32 and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows[8 * 3 + 5], concat[0, :, 3, 5].numpy())  # row = b*h*w + y*w + x


@pytest.mark.parametrize(("layers", "grid", "dim"), [((2, 3), (8, 8), 152), ((3, 4), (4, 4), 432)])
def test_embedded_backbone_patch_features(layers: tuple[int, int], grid: tuple[int, int], dim: int) -> None:
    from myriad.backbone import FeatureBackbone

    extractor = PatchFeatureExtractor(FeatureBackbone(out_indices=layers), image_size=64)
    images = [np.full((50, 70, 3), 128, np.uint8), np.zeros((64, 64, 3), np.uint8)]
    out = extractor(images)
    assert out.shape == (2, dim, *grid) and extractor.dim == dim and extractor.grid == grid


def test_fold_batchnorm_keeps_outputs() -> None:
    from myriad.backbone import FeatureBackbone

    backbone = FeatureBackbone(out_indices=(2, 3))
    x = torch.randn(2, 3, 64, 64)
    folded = fold_batchnorm(backbone.model, check_input=x[:1])
    assert folded is not backbone.model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        for a, b in zip(backbone.model(x), folded(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_fold_batchnorm_returns_the_original_when_outputs_change() -> None:
    class Odd(torch.nn.Module):  # BatchNorm registered after the conv but applied before it
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.bn = torch.nn.BatchNorm2d(3)
            self.bn.running_mean.fill_(1.0)
            self.bn.running_var.fill_(4.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.bn(x))

    model = Odd().eval()
    assert fold_batchnorm(model, check_input=torch.randn(1, 3, 4, 4)) is model


@pytest.mark.parametrize("shape", [(3, 40, 56), (2, 64, 64), (1, 20, 9)])
def test_gaussian_blur_matches_scipy(shape: tuple[int, int, int]) -> None:
    from scipy.ndimage import gaussian_filter

    maps = np.random.default_rng(0).random(shape).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(maps), sigma=4.0).numpy()
    theirs = np.stack([gaussian_filter(m, sigma=4.0, mode="reflect", truncate=4.0) for m in maps])
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert gaussian_kernel1d(4.0).numel() == 33


def test_upsample_and_blur_shape_and_no_blur() -> None:
    grids = torch.rand(3, 8, 8)
    assert upsample_and_blur(grids, 64, 4.0).shape == (3, 64, 64)
    plain = upsample_and_blur(grids, 64, 0.0)
    torch.testing.assert_close(plain, F.interpolate(grids[:, None], size=(64, 64), mode="bilinear")[:, 0])


def test_map_operator_equals_upsample_blur_resize() -> None:
    """The composed matrices give the same maps as the three steps done one after the other."""
    from myriad.images import resize_map

    grids = torch.rand(3, 16, 12)
    shapes = [(256, 256), (300, 200), (40, 90)]
    reference = F.interpolate(grids[:, None], size=(256, 256), mode="bilinear", align_corners=False)[:, 0]
    reference = gaussian_blur(reference, 4.0).numpy()
    for ref, ours, shape in zip(reference, anomaly_maps(grids, shapes, 256, 4.0), shapes):
        expected = ref if shape == (256, 256) else resize_map(ref, *shape)
        assert ours.shape == shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))
