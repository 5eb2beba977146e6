"""PatchCore's feature cache: the backbone runs once per image, and the results do not change."""

from __future__ import annotations

import numpy as np
import pytest

from myriad.errors import ConfigError


@pytest.mark.parametrize("method", ["kfold", "auto"])
def test_calibrated_fit_runs_the_backbone_once_per_image_with_identical_results(monkeypatch, crops, add_scratch, fast, method):
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
    extra = {"mode": "few_shot"} if method == "auto" else {}  # leave-one-out needs every patch kept (or many images)
    for mb in (0, 64):
        CACHE.clear()
        seen.clear()
        expert, calibrator = fit_calibrated(lambda: get_expert("patchcore", {**fast, "feature_cache_mb": mb, **extra}), normals, method=method)
        backbone_images = sum(seen)
        predictions = expert.predict(tests)
        results[mb] = (backbone_images, [p.score for p in predictions], [p.anomaly_map for p in predictions],
                       calibrator.to_dict())
    (uncached, scores0, maps0, cal0), (cached, scores1, maps1, cal1) = results[0], results[64]
    if method == "kfold":
        # 3 folds fit 6 and score 3 each, then the final fit: 36 images through the backbone without the cache
        assert uncached == 3 * (6 + 3) + 9
        # with it each normal image runs once (fits store, held-out scoring reads), plus the first fold's held-out third
        assert cached == 9 + 3
    else:  # leave-one-out: the fit, then one held-out pass over the same images (read from the cache)
        assert calibrator.method.startswith("leave-one-out")
        assert uncached == 9 + 9 and cached == 9
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
