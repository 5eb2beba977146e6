"""Fixtures for the MuSc tests: synthetic defects on crops of skimage's brick texture."""

from __future__ import annotations

import numpy as np
import pytest


def brick_crops(n_normal: int, n_defect: int, size: int = 128, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Random crops of ``skimage.data.brick()``; the last ``n_defect`` carry a defect (returns images, masks).

    Defects cycle through a foreign texture patch (gravel), a dark scratch and a bright stain.
    """
    import skimage.data
    from skimage.draw import disk, line

    rng = np.random.default_rng(seed)
    brick = skimage.data.brick().astype(np.float32)
    gravel = skimage.data.gravel().astype(np.float32)
    images, masks = [], []
    for index in range(n_normal + n_defect):
        y, x = rng.integers(0, brick.shape[0] - size, 2)
        crop = brick[y : y + size, x : x + size].copy()
        mask = np.zeros((size, size), dtype=bool)
        if index >= n_normal:
            s = size // 5
            cy, cx = rng.integers(s, size - 2 * s, 2)
            kind = (index - n_normal) % 3
            if kind == 0:
                gy, gx = rng.integers(0, gravel.shape[0] - s, 2)
                crop[cy : cy + s, cx : cx + s] = gravel[gy : gy + s, gx : gx + s]
                mask[cy : cy + s, cx : cx + s] = True
            elif kind == 1:
                for t in range(-2, 3):
                    rr, cc = line(cy + t, cx, cy + s + t, cx + 2 * s)
                    keep = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
                    crop[rr[keep], cc[keep]] = 10
                    mask[rr[keep], cc[keep]] = True
            else:
                rr, cc = disk((cy + s // 2, cx + s // 2), s // 2, shape=crop.shape)
                crop[rr, cc] += 90
                mask[rr, cc] = True
        images.append(np.repeat(np.clip(crop, 0, 255).astype(np.uint8)[..., None], 3, axis=2))
        masks.append(mask)
    return images, masks


@pytest.fixture(scope="session")
def bricks() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """10 normal and 3 defective 128 px brick crops, with masks."""
    return brick_crops(10, 3)
