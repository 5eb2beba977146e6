"""NSA-style anomaly synthesis for training (natural synthetic anomalies, as AnomalyGPT/Myriad train).

One or two patches (the second with probability 0.5) are cut from *another* normal
image, resized, shifted to a random place and Poisson-blended in with OpenCV's
``seamlessClone`` (``NORMAL_CLONE``). The label is where blending changed the image:
mean absolute intensity change above ``tol`` (median-filtered), weighted by a
logistic of that change; the binary mask is ``label > 0.5``. A sample is retried until
its mask is non-empty. ``method="cutpaste"`` pastes the patch without blending.

Patch half-widths are ``(offset + Gamma(shape, scale)) * size`` clipped to per-category
bounds (``WidthBounds``); resize factors come from ``N(1, 0.5)`` clipped to
``resize_bounds`` ((0.7, 1.3) for objects, (0.5, 2) for textures in the reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from myriad.errors import ConfigError

Bounds = tuple[tuple[float, float], tuple[float, float]]


@dataclass(frozen=True)
class NSASettings:
    """Parameters of the synthesis (reference defaults)."""

    width_bounds: Bounds = ((0.03, 0.4), (0.03, 0.4))
    gamma: tuple[float, float, float] = (2.0, 0.05, 0.03)  # shape, scale, offset (fractions of the side)
    resize_bounds: tuple[float, float] = (0.7, 1.3)
    num_patches: int = 2
    logistic: tuple[float, float] = (1 / 6, 20.0)  # k, x0 of the intensity-change logistic
    tol: float = 1.0
    method: Literal["nsa", "cutpaste"] = "nsa"
    max_tries: int = 50
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SyntheticAnomaly:
    """A synthetic anomalous image with its soft label and binary mask."""

    image: np.ndarray  # H x W x 3 uint8
    label: np.ndarray  # H x W float32 in [0, 1]
    mask: np.ndarray  # H x W bool
    centers: tuple[tuple[float, float], ...]  # (row, col) of each patch, in pixels


def _patch_size(rng: np.random.Generator, side: int, bounds: tuple[float, float], gamma: tuple[float, float, float]) -> int:
    shape, scale, offset = gamma
    lo, hi = round(bounds[0] * side), round(bounds[1] * side)
    return int(np.clip((offset + rng.gamma(shape, scale)) * side, max(lo, 2), max(hi, 3)))


def _one_patch(
    dest: np.ndarray, source: np.ndarray, rng: np.random.Generator, s: NSASettings
) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    import cv2

    h, w = dest.shape[:2]
    half_h = _patch_size(rng, h, s.width_bounds[0], s.gamma)
    half_w = _patch_size(rng, w, s.width_bounds[1], s.gamma)
    cy = int(rng.integers(half_h, max(half_h + 1, h - half_h)))
    cx = int(rng.integers(half_w, max(half_w + 1, w - half_w)))
    patch = source[max(cy - half_h, 0) : cy + half_h, max(cx - half_w, 0) : cx + half_w]
    scale = float(np.clip(rng.normal(1.0, 0.5), *s.resize_bounds))
    ph = int(np.clip(patch.shape[0] * scale, 4, h - 4))
    pw = int(np.clip(patch.shape[1] * scale, 4, w - 4))
    patch = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_LINEAR)
    # destination centre, keeping the patch one pixel inside the border (seamlessClone needs it)
    ty = int(rng.integers(ph // 2 + 1, h - (ph + 1) // 2 - 1 + 1))
    tx = int(rng.integers(pw // 2 + 1, w - (pw + 1) // 2 - 1 + 1))
    top, left = ty - ph // 2, tx - pw // 2
    out = dest.copy()
    if s.method == "cutpaste":
        out[top : top + ph, left : left + pw] = patch
    else:
        clone_mask = np.full((ph, pw), 255, np.uint8)
        try:
            out = cv2.seamlessClone(patch, dest, clone_mask, (left + pw // 2, top + ph // 2), cv2.NORMAL_CLONE)
        except cv2.error:
            return None
    return out, (top, top + ph, left, left + pw)


def synthesize(
    image: np.ndarray, source: np.ndarray, rng: np.random.Generator, settings: NSASettings | None = None
) -> SyntheticAnomaly:
    """Blend 1-2 patches of ``source`` into ``image`` (both RGB uint8, same size); seeded by ``rng``."""
    import cv2
    from scipy.ndimage import median_filter

    s = settings or NSASettings()
    if image.shape != source.shape or image.ndim != 3 or image.dtype != np.uint8:
        raise ConfigError(f"synthesize needs two RGB uint8 images of one size, got {image.shape} and {source.shape}")
    if min(image.shape[:2]) < 16:
        raise ConfigError(f"images of {image.shape[:2]} are too small to synthesise anomalies (min 16 px)")
    k, x0 = s.logistic
    for _ in range(s.max_tries):
        out = image
        region = np.zeros(image.shape[:2], bool)
        centers = []
        for i in range(max(1, s.num_patches)):
            if i > 0 and rng.random() < 0.5:
                continue
            result = _one_patch(out, source, rng, s)
            if result is None:
                continue
            out, (t, b, l, r) = result
            region[t:b, l:r] = True
            centers.append(((t + b) / 2.0, (l + r) / 2.0))
        change = np.abs(out.astype(np.float32) - image.astype(np.float32)).mean(-1) * region
        changed = cv2.medianBlur((change > s.tol).astype(np.uint8), 5).astype(bool)
        smooth = median_filter(change, size=11)
        label = (changed / (1.0 + np.exp(-k * (smooth - x0)))).astype(np.float32)
        mask = label > 0.5
        if mask.any():
            return SyntheticAnomaly(out, label, mask, tuple(centers))
    raise ConfigError(
        f"no visible anomaly after {s.max_tries} tries: source and image may be too similar "
        f"(or tol={s.tol} / logistic={s.logistic} too strict)"
    )
