"""The soft-stain expert: the contract, stains caught with their extent, held-out calibration, saved state."""

from __future__ import annotations

import numpy as np
import pytest

from myriad.errors import ConfigError, WeightsError
from myriad.plugins import get_expert

FAST = {"num_threads": 1, "bank_size": 4000}


def _brick_crops(n: int, seed: int, size: int = 96) -> list[np.ndarray]:
    """RGB crops of scikit-image's brick photo at native resolution, each a little brighter or darker."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photo = skimage.data.brick().astype(np.float32)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, photo.shape[0] - size, 2)
        crop = photo[y : y + size, x : x + size] * rng.uniform(0.97, 1.03)
        out.append(np.repeat(np.clip(crop, 0, 255).astype(np.uint8)[..., None], 3, axis=2))
    return out


def _stained(image: np.ndarray, centre: tuple[int, int], radius: float, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """The image with a soft round patch ``factor`` times as bright (texture kept), and the patch's mask."""
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    distance = np.hypot(yy - centre[0], xx - centre[1])
    alpha = np.clip(radius + 2 - distance, 0, 4) / 4
    out = image.astype(np.float32) * (1 + (factor - 1) * alpha[..., None])
    return np.clip(out, 0, 255).astype(np.uint8), distance <= radius


def test_tone_features_see_a_brightness_change_as_a_shift_and_no_colour_on_grey():
    from myriad_experts_stain.features import feature_count, tone_features

    image = _brick_crops(1, 0)[0]
    features = tone_features(image, [2.0, 4.0], 8.0, 4)
    assert features.shape == (24, 24, feature_count([2.0, 4.0])) and features.dtype == np.float32
    assert np.allclose(features[..., 4:], 0.0, atol=1e-6)  # chroma of a grey photo
    brighter = tone_features(np.clip(image.astype(np.float32) * 1.3, 0, 255).astype(np.uint8), [2.0, 4.0], 8.0, 4)
    shift = brighter[..., 0] - features[..., 0]  # the local mean of log-luminance at 2 px
    assert 0.15 < float(np.median(shift)) < 0.27  # log(1.3) = 0.26, less the floor's share in dark pixels
    assert np.abs(brighter[..., 1] - features[..., 1]).mean() < 0.02  # the difference to the surroundings stays


def test_a_soft_stain_scores_above_every_normal_and_is_located_on_the_stain():
    from myriad.calibration import fit_calibrated
    from myriad.findings import located_region

    expert, calibrator = fit_calibrated(lambda: get_expert("stain", FAST), _brick_crops(30, 1))
    assert calibrator.method.startswith("leave-one-out")
    normals = [p.score for p in expert.predict(_brick_crops(12, 2))]
    image, mask = _stained(_brick_crops(1, 3)[0], (48, 40), 12.0, 1.45)
    (pred,) = expert.predict([image])
    assert pred.score > max(normals) and calibrator.is_anomalous(pred.score)
    region = located_region(calibrator.apply_map(pred.anomaly_map), 0.5)
    assert region is not None and (region & mask).sum() > 0.9 * region.sum()  # on the stain, nowhere else
    peak = np.unravel_index(int(np.argmax(pred.anomaly_map)), pred.anomaly_map.shape)
    assert mask[peak]


def test_heldout_predictions_leave_each_image_out_and_refuse_other_groups():
    images = _brick_crops(6, 4)
    expert = get_expert("stain", FAST).fit(images)
    held = expert.heldout_predictions(images)
    assert held is not None and len(held) == 6 and all(p.anomaly_map.shape == (96, 96) for p in held)
    own = expert.predict(images)  # scored against a bank that holds their own cells
    assert all(h.score > o.score for h, o in zip(held, own))
    assert expert.heldout_predictions(images, groups=[0, 0, 1, 1, 2, 2]) is None
    assert expert.heldout_predictions(images[:5]) is None


def test_one_reference_cannot_be_held_out():
    images = _brick_crops(1, 5)
    expert = get_expert("stain", {**FAST, "mode": "few_shot"}).fit(images)
    assert expert.heldout_predictions(images) is None
    assert len(expert.predict(_brick_crops(2, 6))) == 2


def test_the_position_baseline_needs_twenty_normal_images():
    few = get_expert("stain", FAST).fit(_brick_crops(19, 7))
    assert few.baseline_mean is None
    many = get_expert("stain", FAST).fit(_brick_crops(20, 7))
    assert many.baseline_mean is not None and many.baseline_mean.shape == (24, 24)
    off = get_expert("stain", {**FAST, "position_baseline": False}).fit(_brick_crops(20, 7))
    assert off.baseline_mean is None


def test_images_of_another_size_are_scored_at_the_fitted_resolution_with_maps_at_their_own():
    expert = get_expert("stain", FAST).fit(_brick_crops(4, 8))
    assert expert.work_shape == (96, 96)
    (pred,) = expert.predict([_brick_crops(1, 9, 150)[0][:, :120]])
    assert pred.anomaly_map.shape == (150, 120)


def test_saved_state_round_trips_and_refuses_other_settings(tmp_path):
    images = _brick_crops(22, 10)
    expert = get_expert("stain", FAST).fit(images)
    expert.save(tmp_path / "s")
    from myriad_experts_stain.expert import StainExpert

    loaded = StainExpert.load(tmp_path / "s")
    tests = _brick_crops(3, 11)
    assert [p.score for p in loaded.predict(tests)] == pytest.approx([p.score for p in expert.predict(tests)], abs=1e-5)
    assert loaded.baseline_mean is not None
    other = get_expert("stain", {**FAST, "context": 24.0})
    from myriad.io import load_tensors

    with pytest.raises(WeightsError, match="context"):
        other.load_state_tensors(load_tensors(tmp_path / "s" / "state.safetensors"), {**expert.state_metadata()})
    tensors = load_tensors(tmp_path / "s" / "state.safetensors")
    del tensors["feature_scale"]
    with pytest.raises(WeightsError, match="needs"):
        get_expert("stain", FAST).load_state_tensors(tensors, expert.state_metadata())


@pytest.mark.parametrize(
    "config, message",
    [({"scales": [4.0, 2.0]}, "increasing"), ({"scales": [2.0, 20.0]}, "wider than the largest scale"),
     ({"stride": 0}, "stride")],
)
def test_bad_settings_are_refused_in_one_line(config, message):
    with pytest.raises(ConfigError, match=message):
        get_expert("stain", config)


def test_an_image_too_small_for_the_stride_is_refused_clearly():
    with pytest.raises(ConfigError, match="too small for stride 16"):
        get_expert("stain", {**FAST, "stride": 16}).fit([np.zeros((20, 20, 3), np.uint8)] * 2)
