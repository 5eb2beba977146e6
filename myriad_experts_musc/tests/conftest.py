"""Fixtures for the MuSc tests: synthetic defects on crops of skimage's brick texture."""

from __future__ import annotations

import numpy as np
import pytest

from myriad.testing import brick_crops


@pytest.fixture(scope="session")
def bricks() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """10 normal and 3 defective 128 px brick crops, with masks."""
    return brick_crops(10, 3)
