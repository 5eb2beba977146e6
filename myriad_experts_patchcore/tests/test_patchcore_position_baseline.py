"""PatchCore's per-position baseline: fitted on held-out normal grids, applied to maps and scores, saved."""

from __future__ import annotations

import numpy as np
import pytest

from myriad.errors import ConfigError, WeightsError
from myriad.plugins import get_expert
from myriad_experts_patchcore.position import SCALE_FLOOR, fit_position_baseline


def test_baseline_is_the_median_and_floored_deviation_at_each_position() -> None:
    rng = np.random.default_rng(0)
    grids = rng.normal(10.0, 1.0, size=(41, 3, 4))
    grids[:, 0, 0] += 50.0  # a position every normal scores high (a border)
    grids[:, 2, 3] = 7.0  # a position every normal scores alike
    baseline = fit_position_baseline(grids)
    assert baseline.grid == (3, 4)
    assert baseline.median[0, 0] == pytest.approx(np.median(grids[:, 0, 0]), rel=1e-6)
    spread = np.median(np.abs(grids - np.median(grids, axis=0)), axis=0)
    assert baseline.scale[1, 1] == pytest.approx(spread[1, 1], rel=1e-5)
    assert baseline.scale[2, 3] == pytest.approx(SCALE_FLOOR * spread.mean(), rel=1e-5)  # floored, not 0
    z = baseline.apply(grids)
    assert abs(float(np.median(z[:, 0, 0]))) < 1e-5  # the high border is no longer high
    with pytest.raises(ValueError, match="N >= 2"):
        fit_position_baseline(grids[:1])


@pytest.fixture(scope="module")
def pair(crops, fast):
    """The same 24 normal crops fitted with and without the baseline (every patch kept: identical banks)."""
    images = crops(24, seed=3)
    settings = {**fast, "coreset_ratio": 1.0}
    with_baseline = get_expert("patchcore", settings).fit(images)
    raw = get_expert("patchcore", {**settings, "position_baseline": "none"}).fit(images)
    return images, with_baseline, raw


def test_auto_fits_the_baseline_in_one_class_mode_with_enough_images(pair, crops, fast) -> None:
    _, with_baseline, raw = pair
    assert with_baseline.baseline is not None and with_baseline.baseline.grid == with_baseline.grid
    assert raw.baseline is None
    few = get_expert("patchcore", {**fast, "coreset_ratio": 1.0}).fit(crops(5, seed=4))
    assert few.baseline is None  # auto: fewer than 20 normal images
    shots = get_expert("patchcore", {**fast, "mode": "few_shot"}).fit(crops(24, seed=4))
    assert shots.baseline is None  # auto: few-shot mode
    paper = get_expert("patchcore", {**fast, "coreset_ratio": 1.0, "reweight": True}).fit(crops(24, seed=4))
    assert paper.baseline is None  # auto: the paper's reweighting keeps raw scores (and fits, no error)


def test_scores_and_maps_are_the_raw_ones_compared_position_by_position(pair, crops) -> None:
    _, with_baseline, raw = pair
    tests = crops(3, seed=9)
    z = with_baseline.predict(tests)
    plain = raw.predict(tests)
    rows, grid = raw._patch_rows(tests, store=False)
    sq, _ = raw.bank.search(rows, 1)
    expected = with_baseline.baseline.apply(sq[:, 0].reshape(len(tests), *grid))
    import torch

    from myriad_experts_patchcore.scoring import gaussian_blur

    smoothed = gaussian_blur(torch.from_numpy(expected), with_baseline.score_sigma).flatten(1).max(dim=1).values
    for pred, want, base in zip(z, smoothed, plain):
        assert pred.score == pytest.approx(float(want), rel=1e-5)
        assert pred.anomaly_map.shape == base.anomaly_map.shape
    assert not np.allclose(z[0].anomaly_map, plain[0].anomaly_map)


def test_held_out_scores_reuse_the_fit_grids_and_match_a_fresh_search(pair) -> None:
    images, with_baseline, _ = pair
    held = with_baseline.heldout_predictions(images)
    cached = with_baseline._heldout_grids
    with_baseline._heldout_grids = None  # force the search again
    try:
        fresh = with_baseline.heldout_predictions(images)
    finally:
        with_baseline._heldout_grids = cached
    assert [p.score for p in held] == pytest.approx([p.score for p in fresh], rel=1e-5)
    # normal images compared with normal images: the median held-out score sits near 0 at every position
    grids = with_baseline.baseline.apply(cached[1])
    assert abs(float(np.median(grids))) < 0.1


def test_the_baseline_is_saved_and_loaded_and_a_malformed_one_refused(pair, crops, tmp_path) -> None:
    from myriad.api import load_tensors, save_tensors
    from myriad.experts import Expert

    _, with_baseline, _ = pair
    path = tmp_path / "pc"
    with_baseline.save(path)
    loaded = Expert.load(path)
    tests = crops(2, seed=5)
    assert [p.score for p in loaded.predict(tests)] == pytest.approx([p.score for p in with_baseline.predict(tests)], rel=1e-5)
    weights = path / "state.safetensors"
    tensors = load_tensors(weights)
    tensors["position_scale"] = tensors["position_scale"][:2]
    save_tensors(tensors, weights)
    with pytest.raises(WeightsError, match="position baseline is malformed"):
        Expert.load(path)


def test_score_sigma_smooths_the_patch_scores_before_the_maximum(pair, crops, fast) -> None:
    import torch

    from myriad_experts_patchcore.scoring import gaussian_blur

    images, _, _ = pair
    smooth = get_expert("patchcore", {**fast, "coreset_ratio": 1.0, "score_sigma": 2.0}).fit(images)
    tests = crops(2, seed=8)
    rows, grid = smooth._patch_rows(tests, store=False)
    sq, _ = smooth.bank.search(rows, 1)
    z = torch.from_numpy(smooth.baseline.apply(sq[:, 0].reshape(len(tests), *grid)))
    want = gaussian_blur(z, 2.0).flatten(1).max(dim=1).values
    preds = smooth.predict(tests)
    assert [p.score for p in preds] == pytest.approx([float(v) for v in want], rel=1e-4)
    # the map is drawn from the same smoothed scores (its peak is what the calibration judges)
    from myriad_experts_patchcore.scoring import anomaly_maps

    maps = anomaly_maps(gaussian_blur(z.float(), 2.0), [t.shape[:2] for t in tests], smooth.config.image_size,
                        smooth.config.blur_sigma)
    for pred, want_map in zip(preds, maps):
        assert np.allclose(pred.anomaly_map, want_map, rtol=1e-4, atol=1e-4)


def test_robust_z_on_request_refuses_what_it_cannot_fit(crops, fast) -> None:
    with pytest.raises(ConfigError, match="position_baseline='robust-z' needs mode='one_class'"):
        get_expert("patchcore", {**fast, "mode": "few_shot", "position_baseline": "robust-z"}).fit(crops(3))
    forced = get_expert("patchcore", {**fast, "coreset_ratio": 1.0, "position_baseline": "robust-z"}).fit(crops(4))
    assert forced.baseline is not None  # on request, below the auto minimum


def test_tiles_of_one_photo_are_left_out_together(crops, fast) -> None:
    """Tiled scoring fits the inner expert on tiles and tells it which photo each tile came from."""
    from myriad.tiling import TiledExpert, Tiling

    photos = crops(4, size=96, seed=6)
    tiling = Tiling(tile=64, stride=32, height=96, width=96)
    tiled = TiledExpert(get_expert("patchcore", {**fast, "coreset_ratio": 1.0, "position_baseline": "robust-z"}), tiling)
    tiled.fit(photos)
    per_photo = len(tiling.boxes)
    assert tiled.inner._heldout_grids[0] == tuple(i for i in range(4) for _ in range(per_photo))
    assert tiled.heldout_predictions(photos) is not None


def test_a_state_saved_before_score_sigma_was_recorded_scores_with_the_raw_maximum(pair, crops, tmp_path) -> None:
    """Its calibration was set on the raw maximum, so the new default (smoothed) must not apply to it."""
    import json

    from myriad.experts import Expert

    images, with_baseline, _ = pair
    assert with_baseline.config.score_sigma is None and with_baseline.score_sigma == 1.0  # the default on z-scores
    path = tmp_path / "pc"
    with_baseline.save(path)
    tests = crops(2, seed=9)
    assert [p.score for p in Expert.load(path).predict(tests)] == pytest.approx(
        [p.score for p in with_baseline.predict(tests)], rel=1e-5
    )
    meta_file = next(f for f in path.iterdir() if f.suffix == ".json")
    meta = json.loads(meta_file.read_text())
    blob = json.dumps(meta)
    assert '"score_sigma"' in blob
    # an older save: no score_sigma in its config nor its state metadata
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "score_sigma"}
        return [strip(v) for v in node] if isinstance(node, list) else node
    meta_file.write_text(json.dumps(strip(meta)))
    older = Expert.load(path)
    assert older.score_sigma == 0.0
    raw_max = get_expert("patchcore", {**with_baseline.config.model_dump(), "score_sigma": 0.0})
    assert get_expert("patchcore", with_baseline.config.model_dump()).score_sigma == 0.0  # no baseline fitted yet
    raw_max.load_state_tensors(*_state(path))
    assert [p.score for p in older.predict(tests)] == pytest.approx([p.score for p in raw_max.predict(tests)], rel=1e-5)


def _state(path):
    """The saved tensors and metadata of an expert folder (with score_sigma recorded, as a current save)."""
    import json

    from myriad.api import load_tensors

    meta = json.loads(next(f for f in path.iterdir() if f.suffix == ".json").read_text())
    metadata = dict(meta["extra"], score_sigma=0.0)
    return load_tensors(path / "state.safetensors"), metadata
