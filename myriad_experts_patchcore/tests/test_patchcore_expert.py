"""PatchCore expert behaviour: detection, reweighting, few-shot, state checks and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from myriad.errors import ConfigError, MyriadError, WeightsError
from myriad.plugins import get_expert


@pytest.fixture(scope="module")
def fitted(crops, fast):
    """A one-class expert fitted on 6 brick crops at 64 px (shared: tests do not modify it)."""
    return get_expert("patchcore", fast).fit(crops(6, seed=0))


def test_detects_a_scratch_and_localises_it(crops, add_scratch) -> None:
    """Embedded backbone, brick texture: a scratched crop outscores normal crops, the map peaks on it."""
    from scipy.ndimage import binary_dilation

    expert = get_expert("patchcore", {"device": "cpu", "num_threads": 1})  # defaults: 256 px, layers 3 + 4
    expert.fit(crops(10, size=256, seed=0))
    normal = crops(4, size=256, seed=1)
    defects = [add_scratch(img, seed=i) for i, img in enumerate(crops(3, size=256, seed=2))]
    normal_scores = [p.score for p in expert.predict(normal)]
    preds = expert.predict([img for img, _ in defects])
    for (img, mask), pred in zip(defects, preds):
        assert pred.score > max(normal_scores)
        peak = np.unravel_index(pred.anomaly_map.argmax(), pred.anomaly_map.shape)
        assert binary_dilation(mask, iterations=8)[peak], "map maximum is not on the scratch"
        assert pred.anomaly_map[mask].mean() > 2 * np.median(pred.anomaly_map)


def test_maps_at_each_image_size_and_euclidean_scores(fast, fitted, crops) -> None:
    images = [crops(1, size=64)[0], np.zeros((30, 90, 3), np.uint8), crops(1, size=100, seed=3)[0][:, :77]]
    raw_max = get_expert("patchcore", {**fast, "score_sigma": 0.0})  # image score = the largest patch score
    raw_max.load_state_tensors(fitted.state_tensors(), fitted.state_metadata())
    preds = raw_max.predict(images)
    assert [p.anomaly_map.shape for p in preds] == [(64, 64), (30, 90), (100, 77)]
    assert [p.anomaly_map.shape for p in fitted.predict(images)] == [(64, 64), (30, 90), (100, 77)]
    plain = get_expert("patchcore", {**fast, "distance": "euclidean", "score_sigma": 0.0})
    plain.load_state_tensors(fitted.state_tensors(), fitted.state_metadata())
    for a, b in zip(preds, plain.predict(images)):
        assert b.score == pytest.approx(np.sqrt(a.score), rel=1e-5)


def test_more_neighbours_never_lower_the_score(fast, fitted, crops) -> None:
    three = get_expert("patchcore", {**fast, "num_neighbors": 3})
    three.load_state_tensors(fitted.state_tensors(), fitted.state_metadata())
    images = crops(3, seed=9)
    for one, avg in zip(fitted.predict(images), three.predict(images)):
        assert avg.score >= one.score - 1e-6


def test_reweighting_follows_the_paper(fast, fitted, crops) -> None:
    """score = (1 - softmax(||m_test - N_b(m*)||)[0]) * s*, distances to m*'s b nearest bank entries."""
    from myriad_experts_patchcore.features import to_patch_rows

    paper = {**fast, "score_sigma": 0.0}  # the paper's s*: the largest patch score
    reweighted = get_expert("patchcore", {**paper, "reweight": True, "reweight_neighbors": 4})
    reweighted.load_state_tensors(fitted.state_tensors(), fitted.state_metadata())
    raw_max = get_expert("patchcore", paper)
    raw_max.load_state_tensors(fitted.state_tensors(), fitted.state_metadata())
    images = crops(2, seed=11)
    plain_scores = [p.score for p in raw_max.predict(images)]
    new_scores = [p.score for p in reweighted.predict(images)]
    bank = fitted.bank.vectors().astype(np.float64)
    rows = to_patch_rows(fitted.extractor(images)).astype(np.float64)
    per_image = rows.shape[0] // 2
    for i in range(2):
        patches = rows[i * per_image : (i + 1) * per_image]
        d = ((patches[:, None] - bank[None]) ** 2).sum(axis=2)
        worst = d.min(axis=1).argmax()
        m_star = d[worst].argmin()
        support = np.argsort(((bank - bank[m_star]) ** 2).sum(axis=1), kind="stable")[:4]
        dist = np.sqrt(((bank[support] - patches[worst]) ** 2).sum(axis=1))
        weight = 1 - np.exp(dist[0]) / np.exp(dist).sum()
        assert d.min(axis=1).max() == pytest.approx(plain_scores[i], rel=1e-4)
        assert new_scores[i] == pytest.approx(weight * plain_scores[i], rel=1e-3)
        assert 0 < weight <= 1


def test_few_shot_augmentation_and_k_shot(fast, crops) -> None:
    refs = crops(3, seed=4)
    sizes = {}
    for augment in ("none", "flip", "rotate", "flip_rotate"):
        expert = get_expert("patchcore", {**fast, "mode": "few_shot", "k_shot": 1, "augment": augment}).fit(refs)
        sizes[augment] = expert.bank.size
    per_image = sizes["none"]
    assert sizes == {"none": per_image, "flip": 3 * per_image, "rotate": 4 * per_image, "flip_rotate": 8 * per_image}
    # brick is oriented: a rotated reference is anomalous without augmentation, normal with it
    rotated = np.ascontiguousarray(np.rot90(refs[0]))
    plain = get_expert("patchcore", {**fast, "mode": "few_shot", "k_shot": 1}).fit(refs)
    augmented = get_expert("patchcore", {**fast, "mode": "few_shot", "k_shot": 1, "augment": "rotate"}).fit(refs)
    assert augmented.predict([rotated])[0].score < 1e-3 < plain.predict([rotated])[0].score
    with pytest.raises(ConfigError, match=r"k_shot=4 but only 3"):
        get_expert("patchcore", {**fast, "mode": "few_shot", "k_shot": 4}).fit(refs)


def test_saved_bank_refuses_another_backbone(fitted, tmp_path) -> None:
    from myriad_experts_patchcore.expert import PatchCoreExpert

    fitted.save(tmp_path / "state")
    meta_path = tmp_path / "state" / "expert.json"
    meta = json.loads(meta_path.read_text())
    assert meta["extra"]["backbone"] == "efficientnet_lite0" and meta["extra"]["feature_dim"] == 40 + 112  # default stages 2 + 3
    meta["config"]["backbone"] = "wide_resnet50_2"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match=r"efficientnet_lite0.*wide_resnet50_2"):
        PatchCoreExpert.load(tmp_path / "state")
    other = get_expert("patchcore", {"image_size": 64, "layers": [3, 4]})
    with pytest.raises(WeightsError, match=r"layers=\[2, 3\].*layers=\[3, 4\]"):
        other.load_state_tensors(fitted.state_tensors(), fitted.state_metadata())


def test_float16_bank_round_trip(fast, crops, tmp_path) -> None:
    from myriad_experts_patchcore.expert import PatchCoreExpert

    expert = get_expert("patchcore", {**fast, "bank_dtype": "float16"}).fit(crops(3))
    expert.save(tmp_path / "s")
    again = PatchCoreExpert.load(tmp_path / "s")
    assert again.bank.features.dtype == np.float16
    images = crops(2, seed=5)
    for a, b in zip(expert.predict(images), again.predict(images)):
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)


def test_any_timm_cnn_from_a_local_weights_file(crops, tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(weights))
    expert = get_expert("patchcore", {"backbone": "resnet18", "weights": str(weights), "image_size": 64, "num_threads": 1})
    expert.fit(crops(2))
    assert expert.bank.dim == 128 + 256  # layer2 + layer3
    assert expert.predict(crops(1, seed=7))[0].anomaly_map.shape == (64, 64)


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ({"augment": "flip"}, ConfigError, "augment='flip' applies to mode='few_shot'"),
        ({"num_neighbors": 1000}, ConfigError, "num_neighbors=1000"),
        ({"layers": [4, 5]}, ConfigError, r"layers=\[4, 5\]"),
        ({"backbone": "resnet18"}, WeightsError, "local weights file"),
        ({"backbone": "not_a_network"}, ConfigError, "not_a_network"),
        ({"weights": "/nonexistent/w.safetensors", "backbone": "resnet18"}, WeightsError, "not found"),
    ],
)
def test_bad_settings_raise_clear_errors(fast, config, error, match, crops) -> None:
    with pytest.raises(error, match=match):
        get_expert("patchcore", {**fast, **config}).fit(crops(2))


@pytest.mark.parametrize("config", [{"layers": [3, 2]}, {"layers": []}, {"device": "tpu"}, {"typo_field": 1}])
def test_invalid_config_values_are_refused(config) -> None:
    with pytest.raises(ConfigError):
        get_expert("patchcore", config)


def test_cuda_without_gpu_is_a_config_error(crops) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="device='cuda'"):
        get_expert("patchcore", {"device": "cuda", "image_size": 64}).fit(crops(1))


def test_empty_fit_and_unreadable_paths(fast, tmp_path) -> None:
    expert = get_expert("patchcore", fast)
    with pytest.raises(MyriadError):
        expert.fit([])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(MyriadError, match="broken.png"):
        expert.fit([bad])


def test_plugin_discovery_does_not_import_torch_or_faiss() -> None:
    code = (
        "import sys, myriad_experts_patchcore.plugin as p; "
        "print(p.PatchCoreConfig().image_size, 'torch' in sys.modules, 'faiss' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1:] == ["False", "False"]


def test_fitting_reports_progress_to_the_host(fast, crops) -> None:
    """Feature extraction and coreset selection report through the host's callback, to their totals."""
    calls: list[tuple[str, int, int]] = []
    expert = get_expert("patchcore", fast)
    expert.progress_callback = lambda stage, done, total: calls.append((stage, done, total))
    expert.fit(crops(3))
    features = [c for c in calls if c[0] == "features"]
    assert features[0] == ("features", 0, 3) and features[-1] == ("features", 3, 3)
    coreset = [c for c in calls if c[0] == "coreset"]
    assert coreset[0][1] == 0 and coreset[-1][1] == coreset[-1][2] == len(expert.bank.features)
    assert [c[1] for c in coreset] == sorted(c[1] for c in coreset)
    silent = get_expert("patchcore", {**fast, "progress": False})
    silent.progress_callback = lambda *args: calls.append(args)
    before = len(calls)
    silent.fit(crops(3))
    assert len(calls) == before


def test_heldout_predictions_equal_a_fit_without_the_image(crops, fast):
    """With the whole bank kept (few-shot, coreset 1.0), leaving an image's rows out of the search is
    exactly fitting on the other images; a group leaves all its images out; a loaded bank cannot."""
    import numpy as np

    from myriad.plugins import get_expert

    settings = {**fast, "mode": "few_shot", "coreset_ratio": 1.0}
    images = crops(4, seed=11)
    expert = get_expert("patchcore", settings).fit(images)
    held = expert.heldout_predictions(images)
    for i in range(4):
        alone = get_expert("patchcore", settings).fit([im for j, im in enumerate(images) if j != i])
        (pred,) = alone.predict([images[i]])
        assert held[i].score == pytest.approx(pred.score, rel=1e-4)
        assert np.allclose(held[i].anomaly_map, pred.anomaly_map, rtol=1e-3, atol=1e-4)
    grouped = expert.heldout_predictions(images, groups=[0, 0, 1, 1])
    (pair,) = get_expert("patchcore", settings).fit(images[2:]).predict([images[0]])
    assert grouped[0].score == pytest.approx(pair.score, rel=1e-4)
    assert expert.heldout_predictions(images[:3]) is None  # not the fitted images
    assert expert.heldout_predictions(images, groups=[0, 0, 0, 0]) is None  # nothing left outside the group


def test_a_coreset_of_few_images_leaves_held_out_scores_to_the_folds(crops, fast):
    from myriad.plugins import get_expert
    from myriad_experts_patchcore.expert import HELDOUT_MIN_IMAGES

    images = crops(4, seed=12)
    expert = get_expert("patchcore", {**fast, "coreset_ratio": 0.1}).fit(images)
    assert 4 < HELDOUT_MIN_IMAGES and expert.heldout_predictions(images) is None


def test_certified_search_gives_the_exact_image_scores(crops, add_scratch) -> None:
    """search="certified": IVF upper bounds everywhere, exact search only where the image score can come from."""
    config = {"image_size": 128, "device": "cpu", "num_threads": 1, "coreset_ratio": 1.0}
    exact = get_expert("patchcore", config).fit(crops(24, size=128, seed=1))  # 24 x 256 patches: the IVF index pays
    certified = get_expert("patchcore", {**config, "search": "certified"})
    certified.load_state_tensors(exact.state_tensors(), exact.state_metadata())
    assert certified.score_sigma == 1.0 and certified.baseline is not None  # the smoothed z-scores are certified
    images = crops(4, size=128, seed=7) + [add_scratch(img, seed=s)[0] for s, img in enumerate(crops(3, size=128, seed=8))]
    for a, b in zip(exact.predict(images), certified.predict(images)):
        assert b.score == pytest.approx(a.score, rel=1e-5)
        assert (b.anomaly_map >= a.anomaly_map - 1e-4).all()  # where patches were only bounded it may read higher
    assert certified.bank._upper is not None  # the bound was used, not the exact fallback


def test_bounded_heldout_search_keeps_every_heldout_image_score(crops) -> None:
    """heldout_search="bounded": the baseline is fitted on IVF upper bounds, then each held-out image's score is
    certified: equal to the exact held-out search's under the same baseline (its map may read higher)."""
    config = {"image_size": 128, "device": "cpu", "num_threads": 1, "coreset_ratio": 1.0, "position_baseline": "robust-z"}
    images = crops(24, size=128, seed=1)  # 24 x 256 patches: the IVF index pays
    bounded = get_expert("patchcore", {**config, "heldout_search": "bounded"}).fit(images)
    assert bounded.bank._upper is not None  # the bounds were used
    fitted_grids = bounded._heldout_grids[1]
    exact_grids, no_bounds = bounded._heldout_patch_grids(images, np.arange(len(images)), bounded=False)
    assert no_bounds is None and (fitted_grids >= exact_grids - 1e-2).all()  # never below the exact (float rounding)
    certified = [p.score for p in bounded._grid_predictions(images, fitted_grids)]
    exact = [p.score for p in bounded._grid_predictions(images, exact_grids)]
    assert certified == pytest.approx(exact, rel=1e-5)
    held = bounded.heldout_predictions(images)
    assert [p.score for p in held] == pytest.approx(exact, rel=1e-5)
    exact_fit = get_expert("patchcore", {**config, "heldout_search": "exact"}).fit(images)
    assert np.allclose(exact_fit._heldout_grids[1], exact_grids, rtol=1e-5, atol=1e-5)
