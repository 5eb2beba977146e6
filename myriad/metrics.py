"""Evaluation metrics for anomaly detection: AUROC, AP, F1-max, AUPRO and the accuracy threshold.

Everything here is exact (no subsampling) and vectorised with numpy: each metric sorts
the scores once and counts with ``searchsorted``/``bincount`` instead of looping over
thresholds, so pixel-level metrics over a hundred 256 x 256 maps take well under a second.

Conventions:

* ``labels`` / ``masks`` are binary: ``bool`` or numbers equal to 0 (normal) and 1
  (anomalous). Masks are ``N x H x W`` (a single ``H x W`` mask is accepted) or a
  sequence of 2-D masks whose shapes match the maps one by one.
* ``scores`` / ``maps`` are real numbers where higher means more anomalous; a sample is
  predicted anomalous when ``score >= threshold``.
* Invalid input (one class only, mismatched shapes, NaN, non-binary labels) raises
  :class:`ValueError` with a message saying what is wrong.

Over 400 lines on purpose: every metric of the paper's tables, each a small pure function sharing the same input checks; splitting them would spread one contract over several files.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import numpy as np

__all__ = [
    "image_auroc",
    "pixel_auroc",
    "average_precision",
    "pixel_average_precision",
    "f1_max",
    "pixel_f1_max",
    "aupro",
    "accuracy",
    "best_threshold_accuracy",
    "kfold_indices",
    "max_normal_threshold",
    "accuracy_threshold",
    "kfold_max_threshold",
    "summarise",
]

# --------------------------------------------------------------------------- validation


def _as_binary(values: object, what: str) -> np.ndarray:
    """Flatten ``values`` to a bool array, refusing anything that is not 0/1."""
    arr = np.asarray(values)
    if arr.dtype == np.bool_:
        return arr.ravel()
    if arr.dtype.kind not in "uif":
        raise ValueError(f"{what} must be bool or 0/1 numbers, got dtype {arr.dtype}")
    flat = arr.ravel()
    if arr.dtype.kind == "f" and np.isnan(flat).any():
        raise ValueError(f"{what} contain NaN")
    positive = flat == 1
    if not (positive | (flat == 0)).all():
        bad = flat[~(positive | (flat == 0))][:5]
        raise ValueError(f"{what} must contain only 0 and 1 (or bool), found e.g. {bad.tolist()}; use `mask > 0` for 0/255 masks")
    return positive


def _as_scores(values: object, what: str, finite: bool = False) -> np.ndarray:
    """Flatten ``values`` to a float64 array, refusing NaN (and infinity when ``finite``)."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "buif":
        raise ValueError(f"{what} must be real numbers, got dtype {arr.dtype}")
    flat = arr.astype(np.float64, copy=False).ravel()
    if finite:
        if not np.isfinite(flat).all():
            raise ValueError(f"{what} contain NaN or infinity")
    elif np.isnan(flat).any():
        raise ValueError(f"{what} contain NaN")
    return flat


def _check_pair(labels: np.ndarray, scores: np.ndarray, label_what: str, score_what: str) -> tuple[int, int]:
    """Check matching sizes and both classes present; return (positives, negatives)."""
    if labels.size != scores.size:
        raise ValueError(f"{label_what} and {score_what} differ in size: {labels.size} vs {scores.size}")
    if labels.size == 0:
        raise ValueError(f"{label_what} and {score_what} are empty")
    positives = int(np.count_nonzero(labels))
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        only = "normal (0)" if positives == 0 else "anomalous (1)"
        raise ValueError(f"{label_what} contain only {only} values; the metric needs both classes")
    return positives, negatives


def _labels_scores(labels: object, scores: object) -> tuple[np.ndarray, np.ndarray, int, int]:
    y = _as_binary(labels, "labels")
    s = _as_scores(scores, "scores")
    if np.shape(labels) != np.shape(scores) and np.squeeze(labels).shape != np.squeeze(scores).shape:
        raise ValueError(f"labels and scores differ in shape: {np.shape(labels)} vs {np.shape(scores)}")
    npos, nneg = _check_pair(y, s, "labels", "scores")
    return y, s, npos, nneg


def _image_pairs(masks: object, maps: object) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split masks and maps into matching lists of 2-D arrays (bool masks, float64 maps)."""

    def split(values: object, what: str) -> list[np.ndarray]:
        if isinstance(values, np.ndarray) or np.isscalar(values):
            arr = np.asarray(values)
            if arr.ndim == 2:
                return [arr]
            if arr.ndim == 3:
                return list(arr)
            raise ValueError(f"{what} must be N x H x W (or H x W), got shape {arr.shape}")
        items = [np.asarray(item) for item in values]  # type: ignore[union-attr]
        for index, item in enumerate(items):
            if item.ndim != 2:
                raise ValueError(f"{what}[{index}] must be H x W, got shape {item.shape}")
        return items

    mask_list = split(masks, "masks")
    map_list = split(maps, "maps")
    if len(mask_list) != len(map_list):
        raise ValueError(f"got {len(mask_list)} masks but {len(map_list)} maps")
    if not mask_list:
        raise ValueError("masks and maps are empty")
    for index, (mask, amap) in enumerate(zip(mask_list, map_list)):
        if mask.shape != amap.shape:
            raise ValueError(f"masks[{index}] has shape {mask.shape} but maps[{index}] has shape {amap.shape}")
    return mask_list, map_list


def _pixels(masks: object, maps: object) -> tuple[np.ndarray, np.ndarray]:
    """Flatten masks and maps over all images, checking shapes image by image."""
    if isinstance(masks, np.ndarray) and isinstance(maps, np.ndarray):
        if masks.shape != maps.shape:
            raise ValueError(f"masks have shape {masks.shape} but maps have shape {maps.shape}")
        if masks.ndim not in (2, 3):
            raise ValueError(f"masks and maps must be N x H x W (or H x W), got shape {masks.shape}")
        return _as_binary(masks, "masks"), _as_scores(maps, "maps")
    mask_list, map_list = _image_pairs(masks, maps)
    y = np.concatenate([_as_binary(m, f"masks[{i}]") for i, m in enumerate(mask_list)])
    s = np.concatenate([_as_scores(m, f"maps[{i}]") for i, m in enumerate(map_list)])
    return y, s


# --------------------------------------------------------------------------- ranking metrics


def _auroc(y: np.ndarray, s: np.ndarray, npos: int, nneg: int) -> float:
    """Mann-Whitney U / (P * N): for each positive, the negatives below it plus half the ties.

    Counting ties as one half is exactly the average-rank correction, so the result
    equals the trapezoidal area under the ROC curve over all distinct thresholds.
    """
    negatives = np.sort(s[~y])
    positives = np.sort(s[y])  # sorted queries keep searchsorted cache-friendly
    below = np.searchsorted(negatives, positives, side="left")
    below_or_equal = np.searchsorted(negatives, positives, side="right")
    twice_u = int(below.sum(dtype=np.int64)) + int(below_or_equal.sum(dtype=np.int64))
    return float(twice_u / (2.0 * npos * nneg))


def image_auroc(labels: object, scores: object) -> float:
    """Area under the ROC curve of image ``scores`` against binary ``labels`` (1 = anomalous).

    Exact and tie-correct (Mann-Whitney U with average ranks); equals scikit-learn's
    ``roc_auc_score``. Raises :class:`ValueError` for one class only, NaN or a size mismatch.
    """
    y, s, npos, nneg = _labels_scores(labels, scores)
    return _auroc(y, s, npos, nneg)


def pixel_auroc(masks: object, maps: object) -> float:
    """Pixel-level AUROC: ``masks`` (N x H x W, 0/1) against ``maps`` flattened over all images.

    Exact (no subsampling); 100 maps of 256 x 256 take a fraction of a second.
    """
    y, s = _pixels(masks, maps)
    npos, nneg = _check_pair(y, s, "masks", "maps")
    return _auroc(y, s, npos, nneg)


def _threshold_counts(y: np.ndarray, s: np.ndarray, npos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds in descending order with true/false positives at ``score >= t``."""
    ordered = np.sort(s)
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    thresholds = ordered[starts]
    at_or_above = s.size - starts  # samples with score >= each threshold
    positives = np.sort(s[y])
    tps = npos - np.searchsorted(positives, thresholds, side="left")
    fps = at_or_above - tps
    return thresholds[::-1], tps[::-1].astype(np.int64), fps[::-1].astype(np.int64)


def _average_precision(y: np.ndarray, s: np.ndarray, npos: int) -> float:
    _, tps, fps = _threshold_counts(y, s, npos)
    precision = tps / (tps + fps)
    recall_step = np.diff(tps, prepend=0) / npos
    return float(np.sum(recall_step * precision))


def _f1_max(y: np.ndarray, s: np.ndarray, npos: int) -> tuple[float, float]:
    thresholds, tps, fps = _threshold_counts(y, s, npos)
    # 2PR / (P + R) simplifies to 2 TP / (TP + FP + #positives); zero where TP = 0.
    f1 = 2.0 * tps / (tps + fps + npos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def average_precision(labels: object, scores: object) -> float:
    """Average precision: sum over distinct thresholds of (R_k - R_{k-1}) * P_k.

    Same definition as scikit-learn's ``average_precision_score`` (no interpolation).
    Works for image scores or any flattened pixel arrays of matching shape.
    """
    y, s, npos, _ = _labels_scores(labels, scores)
    return _average_precision(y, s, npos)


def pixel_average_precision(masks: object, maps: object) -> float:
    """Average precision of pixel ``maps`` against ``masks``, flattened over all images."""
    y, s = _pixels(masks, maps)
    npos, _ = _check_pair(y, s, "masks", "maps")
    return _average_precision(y, s, npos)


def f1_max(labels: object, scores: object) -> tuple[float, float]:
    """Best F1 over all thresholds of the precision-recall curve, and the threshold reaching it.

    Returns ``(f1, threshold)``; predicting ``scores >= threshold`` as anomalous gives that
    F1. Ties are handled exactly (a threshold always takes all samples sharing a score);
    when several thresholds reach the same F1 the highest one is returned.
    """
    y, s, npos, _ = _labels_scores(labels, scores)
    return _f1_max(y, s, npos)


def pixel_f1_max(masks: object, maps: object) -> tuple[float, float]:
    """:func:`f1_max` over pixels of ``maps`` against ``masks``, flattened over all images."""
    y, s = _pixels(masks, maps)
    npos, _ = _check_pair(y, s, "masks", "maps")
    return _f1_max(y, s, npos)


# --------------------------------------------------------------------------- AUPRO


def aupro(masks: object, maps: object, fpr_limit: float = 0.3, num_thresholds: int = 200) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to ``fpr_limit``.

    The MVTec AD definition: every connected component (8-connectivity) of every ground
    truth mask is a region. For ``num_thresholds`` thresholds spread evenly between the
    minimum and maximum of ``maps``, a pixel is predicted anomalous when its value is
    ``>= threshold``; PRO is the mean over all regions of the fraction of the region
    predicted anomalous and FPR the fraction of all normal pixels predicted anomalous.
    The curve starts at (0, 0), is cut at ``FPR = fpr_limit`` (the end point linearly
    interpolated), integrated with the trapezoidal rule and divided by ``fpr_limit``,
    so a perfect map scores 1.0.

    Vectorised over thresholds: each pixel's threshold bin is found once and the
    counts per region and threshold are accumulated with one ``bincount``.
    """
    from skimage.measure import label as connected_components

    if not 0.0 < float(fpr_limit) <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if int(num_thresholds) < 2:
        raise ValueError(f"num_thresholds must be at least 2, got {num_thresholds}")
    mask_list, map_list = _image_pairs(masks, maps)

    region_ids: list[np.ndarray] = []  # per image: 0 = normal, k > 0 = global region id
    values: list[np.ndarray] = []
    regions = 0
    for index, (mask, amap) in enumerate(zip(mask_list, map_list)):
        binary = _as_binary(mask, f"masks[{index}]").reshape(mask.shape)
        values.append(_as_scores(amap, f"maps[{index}]", finite=True))
        labelled = connected_components(binary, connectivity=2, background=0).astype(np.int64)
        count = int(labelled.max(initial=0))
        if count:
            labelled[labelled > 0] += regions
        regions += count
        region_ids.append(labelled.ravel())
    ids = np.concatenate(region_ids)
    s = np.concatenate(values)
    if regions == 0:
        raise ValueError("masks contain no anomalous pixels; AUPRO needs at least one defect region")
    normal = ids == 0
    normal_count = int(np.count_nonzero(normal))
    if normal_count == 0:
        raise ValueError("masks contain no normal pixels; AUPRO needs normal pixels for the FPR")

    thresholds = np.linspace(s.min(), s.max(), int(num_thresholds))
    # bins[i] = how many thresholds are <= s[i]: the pixel is positive at thresholds[:bins[i]].
    bins = _count_thresholds_below(thresholds, s)
    steps = thresholds.size + 1

    # Positives per threshold index k = pixels with bin > k: reverse cumulative counts.
    normal_hist = np.bincount(bins[normal], minlength=steps)
    fp = np.cumsum(normal_hist[::-1])[::-1][1:]  # fp[k] = sum(normal_hist[k+1:])
    fpr = fp / normal_count

    anomalous = ~normal
    keys = (ids[anomalous] - 1) * steps + bins[anomalous]
    region_hist = np.bincount(keys, minlength=regions * steps).reshape(regions, steps)
    region_tp = np.cumsum(region_hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
    areas = region_hist.sum(axis=1)
    pro = (region_tp / areas[:, None]).mean(axis=0)

    # Threshold descending => FPR and PRO ascending; start the curve at the origin.
    fpr = np.concatenate(([0.0], fpr[::-1]))
    pro = np.concatenate(([0.0], pro[::-1]))
    return _area_to_limit(fpr, pro, float(fpr_limit)) / float(fpr_limit)


def _count_thresholds_below(thresholds: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``searchsorted(thresholds, values, side="right")`` for evenly spaced ``thresholds``.

    The bin is computed arithmetically; only values within rounding distance of a
    threshold (where the arithmetic could be one off) go through the exact binary
    search, which is several times faster than searching for millions of pixels.
    """
    count = thresholds.size
    step = (thresholds[-1] - thresholds[0]) / (count - 1)
    if not step > 0:  # constant maps: every threshold equals every value
        return np.full(values.size, count, dtype=np.int64)
    position = values - thresholds[0]
    position /= step
    bins = np.floor(position).astype(np.int64)
    bins += 1
    np.clip(bins, 0, count, out=bins)
    position -= np.rint(position)
    near = np.flatnonzero(np.abs(position, out=position) < 1e-6)
    bins[near] = np.searchsorted(thresholds, values[near], side="right")
    return bins


def _area_to_limit(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoidal area under a non-decreasing curve from FPR 0 to ``limit`` (end interpolated)."""
    inside = int(np.searchsorted(fpr, limit, side="right"))  # points with fpr <= limit
    x = fpr[:inside]
    y = pro[:inside]
    if x[-1] < limit and inside < fpr.size:
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
        end = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        x = np.append(x, limit)
        y = np.append(y, end)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


# --------------------------------------------------------------------------- accuracy and its threshold


def accuracy(labels: object, predictions: object) -> float:
    """Fraction of ``predictions`` (0/1 or bool) equal to ``labels`` (0/1 or bool)."""
    y = _as_binary(labels, "labels")
    p = _as_binary(predictions, "predictions")
    if y.size != p.size:
        raise ValueError(f"labels and predictions differ in size: {y.size} vs {p.size}")
    if y.size == 0:
        raise ValueError("labels and predictions are empty")
    return float(np.count_nonzero(y == p) / y.size)


def best_threshold_accuracy(labels: object, scores: object) -> float:
    """The best accuracy any single threshold on ``scores`` gives (``score > t`` anomalous): the oracle a
    calibrated decision is compared with (its gap is what the calibration loses)."""
    y, s, _, _ = _labels_scores(labels, scores)
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    # threshold below every score, then at each distinct score: everything above it is called anomalous
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    normals_at_or_below = np.r_[0, np.cumsum(~y)[last]]
    defects_above = np.r_[np.count_nonzero(y), np.count_nonzero(y) - np.cumsum(y)[last]]
    return float(np.max(normals_at_or_below + defects_above) / s.size)


def kfold_indices(n: int, k: int = 3, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split ``n`` training samples into ``k`` shuffled folds: ``[(train_idx, heldout_idx), ...]``.

    Every index is held out exactly once; fold sizes differ by at most one.
    Deterministic for a given ``seed``.
    """
    n, k = int(n), int(k)
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if n < k:
        raise ValueError(f"k-fold with k = {k} needs at least {k} samples, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    folds = np.array_split(order, k)
    splits = []
    for index, heldout in enumerate(folds):
        train = np.concatenate([fold for other, fold in enumerate(folds) if other != index])
        splits.append((np.sort(train), np.sort(heldout)))
    return splits


def max_normal_threshold(heldout_scores: Sequence[np.ndarray] | Sequence[Sequence[float]], reduce: Literal["max", "mean"] = "max") -> float:
    """Accuracy threshold from k-fold scores of normal training samples (the Myriad paper's rule).

    ``heldout_scores[i]`` are the scores the model fitted on fold ``i``'s training part gives
    to fold ``i``'s held-out normal samples. The threshold is the maximum of all of them
    (``reduce="max"``, the paper's "max scores of normal samples over k-fold evaluations",
    k = 3) or the mean of the per-fold maxima (``reduce="mean"``). A test sample is then
    called anomalous when its score is strictly above the threshold.
    """
    if len(heldout_scores) == 0:
        raise ValueError("no held-out scores given")
    maxima = []
    for index, fold in enumerate(heldout_scores):
        scores = _as_scores(fold, f"heldout_scores[{index}]", finite=True)
        if scores.size == 0:
            raise ValueError(f"heldout_scores[{index}] is empty")
        maxima.append(scores.max())
    if reduce == "max":
        return float(max(maxima))
    if reduce == "mean":
        return float(np.mean(maxima))
    raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")


#: Alias: the conventional accuracy threshold is :func:`max_normal_threshold`.
accuracy_threshold = max_normal_threshold


def kfold_max_threshold(
    score_heldout: Callable[[np.ndarray, np.ndarray], object],
    n: int,
    k: int = 3,
    seed: int = 0,
    reduce: Literal["max", "mean"] = "max",
) -> float:
    """Run the k-fold protocol and return :func:`max_normal_threshold` of its held-out scores.

    ``score_heldout(train_idx, heldout_idx)`` must fit a model on the normal training
    samples ``train_idx`` and return the scores of the samples ``heldout_idx``.
    """
    folds = kfold_indices(n, k=k, seed=seed)
    scores = []
    for index, (train, heldout) in enumerate(folds):
        fold_scores = _as_scores(score_heldout(train, heldout), f"scores of fold {index}", finite=True)
        if fold_scores.size != heldout.size:
            raise ValueError(f"fold {index}: score_heldout returned {fold_scores.size} scores for {heldout.size} held-out samples")
        scores.append(fold_scores)
    return max_normal_threshold(scores, reduce=reduce)


def summarise(
    labels: object,
    scores: object,
    masks: object | None = None,
    maps: object | None = None,
    threshold: float | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """All the usual metrics in one dictionary (keys prefixed ``image_`` and ``pixel_``).

    Image metrics always; pixel metrics and AUPRO when ``masks`` and ``maps`` are given;
    ``accuracy`` when a ``threshold`` is given (anomalous when ``score > threshold``).
    """
    f1, f1_threshold = f1_max(labels, scores)
    result = {
        "image_auroc": image_auroc(labels, scores),
        "image_ap": average_precision(labels, scores),
        "image_f1_max": f1,
        "image_f1_threshold": f1_threshold,
    }
    if threshold is not None:
        result["accuracy"] = accuracy(labels, _as_scores(scores, "scores") > float(threshold))
    if (masks is None) != (maps is None):
        raise ValueError("give both masks and maps for pixel metrics, or neither")
    if masks is not None:
        pixel_f1, pixel_threshold = pixel_f1_max(masks, maps)
        result.update(
            pixel_auroc=pixel_auroc(masks, maps),
            pixel_ap=pixel_average_precision(masks, maps),
            pixel_f1_max=pixel_f1,
            pixel_f1_threshold=pixel_threshold,
            aupro=aupro(masks, maps, fpr_limit=fpr_limit),
        )
    return result
