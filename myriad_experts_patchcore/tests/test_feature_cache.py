"""The process-wide feature cache: bounded, short-lived, and invisible in the results."""

from __future__ import annotations

import numpy as np
import pytest

from myriad.errors import ConfigError

from myriad_experts_patchcore.feature_cache import FeatureCache, image_digest


def test_digest_tells_pixels_shape_and_dtype_apart():
    image = np.zeros((8, 8, 3), np.uint8)
    other = image.copy()
    other[3, 4, 1] = 1
    assert image_digest(image) == image_digest(image.copy())
    assert len({image_digest(image), image_digest(other), image_digest(image.reshape(16, 4, 3)),
                image_digest(image.astype(np.uint16))}) == 4
    assert image_digest(np.asfortranarray(other)) == image_digest(other)  # layout does not matter, pixels do


def test_cache_is_bounded_by_bytes_least_recently_used_first_and_by_age(monkeypatch):
    import myriad_experts_patchcore.feature_cache as fc

    clock = [100.0]
    monkeypatch.setattr(fc.time, "monotonic", lambda: clock[0])
    cache = FeatureCache(ttl=10.0)
    rows = {k: np.full((4, 2), k, np.float32) for k in range(4)}  # 32 bytes each
    for k in range(3):
        cache.put("s", bytes([k]), rows[k], (2, 2), max_bytes=100)
    assert len(cache) == 3 and cache.nbytes == 96
    assert cache.get("s", bytes([0]))[0][0, 0] == 0  # 0 is now the most recently used
    cache.put("s", bytes([3]), rows[3], (2, 2), max_bytes=100)  # evicts 1, the least recently used
    assert cache.get("s", bytes([1])) is None and cache.get("s", bytes([0])) is not None
    assert cache.get("other settings", bytes([0])) is None
    cache.put("s", b"big", np.zeros((100, 2), np.float32), (2, 2), max_bytes=100)  # alone over the bound: not kept
    assert cache.get("s", b"big") is None and cache.nbytes <= 100
    clock[0] += 11.0
    assert cache.get("s", bytes([0])) is None and len(cache) == 0 and cache.nbytes == 0


def test_calibrated_fit_runs_the_backbone_once_per_image_with_identical_results(monkeypatch, crops, add_scratch, fast):
    from myriad.calibration import fit_calibrated
    from myriad.plugins import get_expert
    from myriad_experts_patchcore.expert import PatchCoreExpert
    from myriad_experts_patchcore.feature_cache import CACHE

    normals = crops(9, seed=5)
    tests = [crops(1, seed=6)[0], add_scratch(crops(1, seed=7)[0])[0]]
    seen: list[int] = []
    original = PatchCoreExpert._grid_features

    def counting(self, images):
        seen.append(len(images))
        return original(self, images)

    monkeypatch.setattr(PatchCoreExpert, "_grid_features", counting)
    results = {}
    for mb in (0, 64):
        CACHE.clear()
        seen.clear()
        expert, calibrator = fit_calibrated(lambda: get_expert("patchcore", {**fast, "feature_cache_mb": mb}), normals)
        backbone_images = sum(seen)
        predictions = expert.predict(tests)
        results[mb] = (backbone_images, [p.score for p in predictions], [p.anomaly_map for p in predictions],
                       calibrator.to_dict())
    (uncached, scores0, maps0, cal0), (cached, scores1, maps1, cal1) = results[0], results[64]
    # 3 folds fit 6 and score 3 each, then the final fit: 36 images through the backbone without the cache
    assert uncached == 3 * (6 + 3) + 9
    # with it each normal image runs once (fits store, held-out scoring reads), plus the first fold's held-out third
    assert cached == 9 + 3
    assert scores0 == scores1 and cal0 == cal1
    assert all(np.array_equal(a, b) for a, b in zip(maps0, maps1))
    CACHE.clear()


def test_predictions_read_the_cache_but_never_fill_it(crops, fast):
    from myriad.plugins import get_expert
    from myriad_experts_patchcore.feature_cache import CACHE

    CACHE.clear()
    expert = get_expert("patchcore", {**fast, "feature_cache_mb": 64}).fit(crops(4, seed=1))
    assert len(CACHE) == 4
    expert.predict(crops(3, seed=2))
    assert len(CACHE) == 4
    CACHE.clear()
    with pytest.raises(ConfigError, match="feature_cache_mb"):
        get_expert("patchcore", {**fast, "feature_cache_mb": -1})


def test_a_bfloat16_backbone_gives_close_finite_scores_and_its_own_cache_entries(crops, fast):
    """backbone_precision='bfloat16' changes the features a little (its own cache key, never float32's entries)."""
    from myriad.plugins import get_expert
    from myriad_experts_patchcore.feature_cache import CACHE

    CACHE.clear()
    normals, tests = crops(4, seed=1), crops(2, seed=2)
    plain = get_expert("patchcore", {**fast, "feature_cache_mb": 64}).fit(normals).predict(tests)
    half = get_expert("patchcore", {**fast, "feature_cache_mb": 64, "backbone_precision": "bfloat16"}).fit(normals)
    assert len(CACHE) == 8  # the same images cached once per precision
    for a, b in zip(plain, half.predict(tests)):
        assert np.isfinite(b.score) and np.isfinite(b.anomaly_map).all()
        assert abs(a.score - b.score) <= 0.25 * abs(a.score) + 1e-6
    CACHE.clear()
