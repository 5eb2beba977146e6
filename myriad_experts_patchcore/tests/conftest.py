"""Shared helpers for the PatchCore tests: texture crops and synthetic defects (in memory)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

#: Small, fast settings for tests (one thread: the test machine is shared).
FAST = {"image_size": 64, "device": "cpu", "num_threads": 1}


def brick_crops(n: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """``n`` RGB crops of scikit-image's brick texture."""
    import skimage.data

    texture = skimage.data.brick()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, texture.shape[0] - size + 1, 2)
        out.append(np.ascontiguousarray(np.repeat(texture[y : y + size, x : x + size, None], 3, axis=2)))
    return out


def scratch(image: np.ndarray, seed: int = 0, width: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A dark straight scratch across about a quarter of the image; returns image and mask."""
    from skimage.draw import line

    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    y0, x0 = int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 4, w // 2))
    rr, cc = line(y0, x0, y0 + h // 5, x0 + w // 5)
    mask = np.zeros((h, w), bool)
    for dy in range(width):
        mask[np.clip(rr + dy, 0, h - 1), cc] = True
    out = image.copy()
    out[mask] = 15
    return out, mask


@pytest.fixture(autouse=True)
def _one_torch_thread():  # type: ignore[no-untyped-def]
    """Run each test on one torch and faiss thread (restored after): the test machine's cores are shared,
    and multi-threaded OpenMP regions stall badly when other processes hold the cores."""
    import faiss
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(previous)
    faiss.omp_set_num_threads(previous)


@pytest.fixture(scope="session")
def crops() -> Callable[..., list[np.ndarray]]:
    """``crops(n, size=64, seed=0)``: brick texture crops."""
    return brick_crops


@pytest.fixture(scope="session")
def add_scratch() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``add_scratch(image, seed=0, width=3)`` -> (image, mask)."""
    return scratch


@pytest.fixture(scope="session")
def fast() -> dict:
    """Small, fast expert settings."""
    return dict(FAST)
