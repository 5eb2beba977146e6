"""Metrics against scikit-learn and against slow, obviously-correct reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import label as connected_components
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from myriad import metrics as M


def _random_case(seed: int, n: int = 300, levels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Random labels with scores correlated to them; ``levels`` rounds scores to force ties."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    labels[:2] = [True, False]
    scores = rng.normal(size=n) + labels * rng.uniform(0.0, 2.0)
    if levels is not None:
        scores = np.round(scores * levels / 4.0) / levels
    return labels.astype(int), scores


CASES = [(seed, levels) for seed in range(4) for levels in (None, 3, 10)]


def _sk_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return float(f1.max())


@pytest.mark.parametrize(("seed", "levels"), CASES)
def test_image_metrics_match_sklearn(seed: int, levels: int | None) -> None:
    labels, scores = _random_case(seed, levels=levels)
    assert M.image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert M.average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    f1, threshold = M.f1_max(labels, scores)
    assert f1 == pytest.approx(_sk_f1_max(labels, scores), abs=1e-12)
    # The returned threshold really reaches that F1.
    predicted = scores >= threshold
    tp = np.sum(predicted & (labels == 1))
    assert 2 * tp / (predicted.sum() + labels.sum()) == pytest.approx(f1, abs=1e-12)


def test_all_tied_scores() -> None:
    labels = np.array([0, 1, 0, 1, 1])
    scores = np.full(5, 0.7)
    assert M.image_auroc(labels, scores) == 0.5
    assert M.average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores))
    assert M.f1_max(labels, scores) == (pytest.approx(_sk_f1_max(labels, scores)), 0.7)


def test_perfect_and_inverted_scores() -> None:
    labels = np.array([0, 0, 1, 1])
    assert M.image_auroc(labels, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert M.image_auroc(labels, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert M.average_precision(labels, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert M.f1_max(labels, [0.1, 0.2, 0.8, 0.9]) == (1.0, 0.8)


@pytest.mark.parametrize("seed", [0, 1])
def test_pixel_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = rng.random((4, 16, 20)) < 0.1
    maps = np.round(rng.random((4, 16, 20)) + masks * 0.3, 2).astype(np.float32)
    flat_masks, flat_maps = masks.ravel(), maps.ravel()
    assert M.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(flat_masks, flat_maps), abs=1e-12)
    assert M.pixel_average_precision(masks, maps) == pytest.approx(average_precision_score(flat_masks, flat_maps), abs=1e-12)
    assert M.pixel_f1_max(masks, maps)[0] == pytest.approx(_sk_f1_max(flat_masks, flat_maps), abs=1e-12)
    # Sequences of differently sized images are flattened the same way.
    listed_masks = [masks[0], masks[1, :8], masks[2]]
    listed_maps = [maps[0], maps[1, :8], maps[2]]
    expected = roc_auc_score(np.concatenate([m.ravel() for m in listed_masks]), np.concatenate([m.ravel() for m in listed_maps]))
    assert M.pixel_auroc(listed_masks, listed_maps) == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------- AUPRO


def _slow_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3, num_thresholds: int = 200) -> float:
    """One full pass per threshold, regions from skimage, explicit interpolation at the limit."""
    regions: list[tuple[int, np.ndarray]] = []  # (image index, region pixels)
    for index, mask in enumerate(masks):
        labelled = connected_components(mask, connectivity=2)
        regions += [(index, labelled == k) for k in range(1, labelled.max() + 1)]
    normal = ~masks.astype(bool)
    fprs, pros = [0.0], [0.0]
    for threshold in np.linspace(maps.min(), maps.max(), num_thresholds)[::-1]:
        predicted = maps >= threshold
        fprs.append(np.logical_and(predicted, normal).sum() / normal.sum())
        overlaps = [np.logical_and(predicted[i], region).sum() / region.sum() for i, region in regions]
        pros.append(np.mean(overlaps))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(fprs, pros), zip(fprs[1:], pros[1:])):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def _synthetic(seed: int, n: int = 3, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for index in range(n):
        for _ in range(rng.integers(0, 3)):
            top, left = rng.integers(0, size - 6, 2)
            height, width = rng.integers(1, 7, 2)
            masks[index, top : top + height, left : left + width] = 1
    masks[0, 2, 2] = 1  # a one-pixel region, and at least one region overall
    maps = rng.random((n, size, size)) + masks * rng.uniform(0.0, 1.0)
    return masks, maps


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(("fpr_limit", "num_thresholds"), [(0.3, 200), (0.05, 37), (1.0, 50)])
def test_aupro_matches_slow_reference(seed: int, fpr_limit: float, num_thresholds: int) -> None:
    masks, maps = _synthetic(seed)
    expected = _slow_aupro(masks, maps, fpr_limit, num_thresholds)
    assert M.aupro(masks, maps, fpr_limit, num_thresholds) == pytest.approx(expected, abs=1e-12)


def test_aupro_quantised_maps_with_ties() -> None:
    masks, maps = _synthetic(7)
    maps = np.round(maps * 4) / 4
    assert M.aupro(masks, maps) == pytest.approx(_slow_aupro(masks, maps), abs=1e-12)


def test_aupro_perfect_map_is_one() -> None:
    masks, _ = _synthetic(5)
    assert M.aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert M.aupro(masks, masks * 3.0 + 1.0, num_thresholds=2) == pytest.approx(1.0)


def test_aupro_hand_case() -> None:
    # One image, 2 x 4: region A (2 px, left) and region B (1 px); 5 normal pixels.
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 1]])
    amap = np.array([[1.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.5]])
    # Thresholds 0, 0.5, 1 (descending): at 1 FPR 0, PRO (1/2 + 0)/2 = 0.25;
    # at 0.5 FPR 1/5, PRO (1/2 + 1)/2 = 0.75; at 0 FPR 1, PRO 1.
    # Curve (0, 0) -> (0, .25) -> (.2, .75) -> (1, 1); cut at 0.3: PRO 0.75 + 0.25 * 0.1 / 0.8.
    end = 0.75 + 0.25 * 0.1 / 0.8
    area = 0.2 * (0.25 + 0.75) / 2 + 0.1 * (0.75 + end) / 2
    assert M.aupro(mask, amap, num_thresholds=3) == pytest.approx(area / 0.3)


def test_aupro_regions_are_eight_connected_and_averaged_per_region() -> None:
    mask = np.zeros((6, 6), dtype=bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours: one region of 2 pixels
    mask[4:6, 0:3] = True  # a second region of 6 pixels
    amap = np.zeros((6, 6))
    amap[0, 0] = amap[1, 1] = 1.0  # the small region is found entirely, the large one not at all
    # At threshold 1: FPR 0, PRO = mean(1, 0) = 0.5 (4-connectivity would give 2/3, pixel
    # weighting 0.25); at threshold 0: (1, 1). Cut at 0.3: PRO 0.65, area 0.3 * (0.5 + 0.65) / 2.
    assert M.aupro(mask, amap, num_thresholds=2) == pytest.approx(0.575)


def test_constant_map_gives_diagonal() -> None:
    masks, _ = _synthetic(1)
    assert M.aupro(masks, np.zeros(masks.shape)) == pytest.approx(0.15)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: M.image_auroc([0, 0, 0], [0.1, 0.2, 0.3]), "only normal"),
        (lambda: M.average_precision([1, 1], [0.1, 0.2]), "only anomalous"),
        (lambda: M.f1_max([0, 1], [0.1, 0.2, 0.3]), "differ"),
        (lambda: M.image_auroc([0, 1, 1], [0.1, np.nan, 0.3]), "NaN"),
        (lambda: M.image_auroc([0, 1, 2], [0.1, 0.2, 0.3]), "only 0 and 1"),
        (lambda: M.image_auroc(["a", "b"], [0.1, 0.2]), "dtype"),
        (lambda: M.pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5))), "shape"),
        (lambda: M.pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 4))), "only normal"),
        (lambda: M.pixel_auroc(np.zeros(4), np.zeros(4)), "N x H x W"),
        (lambda: M.pixel_auroc([np.zeros((2, 2))], [np.zeros((2, 2)), np.zeros((2, 2))]), "1 masks but 2 maps"),
        (lambda: M.aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 4))), "no anomalous pixels"),
        (lambda: M.aupro(np.ones((1, 4, 4)), np.zeros((1, 4, 4))), "no normal pixels"),
        (lambda: M.aupro(np.eye(4), np.full((4, 4), np.nan)), "NaN"),
        (lambda: M.aupro(np.eye(4), np.eye(4), fpr_limit=0), "fpr_limit"),
        (lambda: M.aupro(np.eye(4), np.eye(4), num_thresholds=1), "num_thresholds"),
        (lambda: M.accuracy([0, 1], [1]), "differ"),
    ],
)
def test_invalid_input_raises(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------- accuracy and thresholds


def test_accuracy() -> None:
    assert M.accuracy([0, 1, 1, 0], [False, True, False, False]) == 0.75
    assert M.accuracy(np.array([True]), np.array([1])) == 1.0


def test_kfold_indices_partition() -> None:
    folds = M.kfold_indices(10, k=3, seed=1)
    assert len(folds) == 3
    heldout = np.concatenate([h for _, h in folds])
    assert sorted(heldout.tolist()) == list(range(10))
    assert sorted(len(h) for _, h in folds) == [3, 3, 4]
    for train, held in folds:
        assert not set(train) & set(held)
        assert len(train) + len(held) == 10
    again = M.kfold_indices(10, k=3, seed=1)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again))
    with pytest.raises(ValueError, match="at least 3 samples"):
        M.kfold_indices(2, k=3)
    with pytest.raises(ValueError, match="k must be"):
        M.kfold_indices(5, k=1)


def test_max_normal_threshold() -> None:
    scores = [np.array([0.1, 0.4]), np.array([0.2]), [0.3, 0.05]]
    assert M.max_normal_threshold(scores) == 0.4
    assert M.accuracy_threshold(scores, reduce="mean") == pytest.approx(0.3)
    with pytest.raises(ValueError, match="empty"):
        M.max_normal_threshold([np.array([0.1]), np.array([])])
    with pytest.raises(ValueError, match="no held-out"):
        M.max_normal_threshold([])


def test_kfold_max_threshold_runs_the_protocol() -> None:
    normal_scores = np.array([0.1, 0.5, 0.2, 0.9, 0.3, 0.4])
    seen: list[np.ndarray] = []

    def score_heldout(train: np.ndarray, heldout: np.ndarray) -> np.ndarray:
        assert not set(train.tolist()) & set(heldout.tolist())
        seen.append(heldout)
        return normal_scores[heldout]

    assert M.kfold_max_threshold(score_heldout, n=6, k=3) == 0.9
    assert len(seen) == 3
    with pytest.raises(ValueError, match="returned 1 scores"):
        M.kfold_max_threshold(lambda train, heldout: [0.0], n=6)


def test_summarise() -> None:
    labels, scores = _random_case(0, n=40)
    masks, maps = _synthetic(0)
    result = M.summarise(labels, scores, masks, maps, threshold=0.0)
    assert result["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert result["accuracy"] == pytest.approx(np.mean((scores > 0.0) == labels))
    assert set(result) >= {"pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"}
    with pytest.raises(ValueError, match="both masks and maps"):
        M.summarise(labels, scores, masks=masks)


def test_best_threshold_accuracy_is_the_best_single_cut():
    """The oracle accuracy: every cut below, between and at the scores tried, ties kept together."""
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(50):
        y = rng.integers(0, 2, 30)
        y[:2] = [0, 1]
        s = np.round(rng.normal(size=30) + y, 1)  # rounded: tied scores
        cuts = np.concatenate([[s.min() - 1], np.unique(s)])
        expected = max(float(np.mean((s > t) == (y == 1))) for t in cuts)
        assert M.best_threshold_accuracy(y, s) == pytest.approx(expected)
    assert M.best_threshold_accuracy([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert M.best_threshold_accuracy([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.5
