"""NSA synthesis: seeded, masks non-empty and where the image changed."""

import numpy as np
import pytest

from myriad.errors import ConfigError
from myriad.synthetic.nsa import NSASettings, synthesize


def _images():
    from skimage import data

    a = np.repeat(data.brick()[:128, :128, None], 3, -1)
    b = np.repeat(data.gravel()[:128, :128, None], 3, -1)
    return a, b


@pytest.mark.parametrize("method", ["nsa", "cutpaste"])
def test_seeded_and_masked(method):
    a, b = _images()
    s = NSASettings(method=method)
    r1 = synthesize(a, b, np.random.default_rng(3), s)
    r2 = synthesize(a, b, np.random.default_rng(3), s)
    assert np.array_equal(r1.image, r2.image) and np.array_equal(r1.mask, r2.mask)
    assert r1.mask.any() and r1.mask.dtype == bool and r1.label.dtype == np.float32
    changed = np.abs(r1.image.astype(int) - a.astype(int)).mean(-1) > 1
    assert changed[r1.mask].mean() > 0.9  # the mask marks changed pixels
    assert not r1.mask[~changed].any() or r1.mask[~changed].mean() < 0.05
    assert 1 <= len(r1.centers) <= 2


def test_identical_images_cannot_make_anomalies():
    a, _ = _images()
    flat = np.full_like(a, 120)
    with pytest.raises(ConfigError, match="no visible anomaly"):
        synthesize(flat, flat, np.random.default_rng(0), NSASettings(max_tries=3))


def test_bad_shapes():
    a, b = _images()
    with pytest.raises(ConfigError, match="one size"):
        synthesize(a, b[:64], np.random.default_rng(0))
