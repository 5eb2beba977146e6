"""What kind of defect is it? A measured guess from the map's shape and the image's contrast.

:func:`estimate_kind` looks at the defect the calibrated map located (its largest region above the
threshold, or the hot area around the map's peak) and at the image's pixels there, and returns a
:class:`KindEstimate`: one of :data:`KINDS` or None ("cannot tell"), and the measurements it used.
Nothing is learnt; the rules are fixed, documented (``docs/findings.md``) and tested, so a user can
check any answer against the map and the photo:

1. **texture change**: the finding is texture-wide (the defect spreads over the image).
2. **scratch**: the region is elongated: its length is at least :data:`ELONGATED` times its width
   (from the second moments of the region, in image pixels).
3. **hole**: a compact, small region (under :data:`SMALL_REGION` of the image) clearly darker than
   its surroundings (contrast at most ``-`` :data:`CLEAR_CONTRAST`).
4. **stain**: a compact region whose colour differs from its surroundings (chroma contrast at least
   :data:`CLEAR_CONTRAST`) more than its brightness does.
5. a *faint* compact region (brightness contrast under :data:`CLEAR_CONTRAST`) covering at least
   :data:`SMALL_REGION` of the image: **texture change** when it is clearly smoother than its
   surroundings (its fine detail, the mean absolute Laplacian of L*, at most :data:`SMOOTHER` times
   theirs: a blur, smear or polished spot), else **stain** when its tone (median L* or chroma) is
   shifted by at least :data:`TONE_SHIFT` times the surroundings' spread, else None (neither tone nor
   sharpness changed measurably: the map shows where, not what).
6. **contamination / foreign particle**: any other compact region of clear brightness contrast.
7. otherwise None: the map shows where, but not what.

*Contrast* is measured on the image's luminance (CIELAB L*; for colour, on its chroma): the mean
signed deviation of the region's *core* (its :data:`CORE_SHARE` most deviating pixels) from the
median of a ring around the region, divided by the same statistic of the ring itself. So 1 means
"as contrasted as the surroundings' own extremes" (normal texture), and a clear difference is at
least :data:`CLEAR_CONTRAST`. The map is smooth and wider than a thin defect, so the region's core,
not its mean, carries the contrast.

The kinds "crack", "missing or extra material", "deformation" and "colour change" belong to the
documented vocabulary (:data:`KINDS`) but no rule produces them: telling a crack from a scratch, or
a missing part from a hole, needs knowledge of the object that a map and a photo patch do not give.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "CLEAR_CONTRAST",
    "CORE_SHARE",
    "ELONGATED",
    "KINDS",
    "MEASURED_KINDS",
    "SMALL_REGION",
    "SMOOTHER",
    "TONE_SHIFT",
    "KindEstimate",
    "estimate_kind",
]

#: The documented kind vocabulary (issue #14), in the order the docs list them.
KINDS: tuple[str, ...] = (
    "scratch",
    "crack",
    "hole",
    "stain",
    "contamination / foreign particle",
    "missing or extra material",
    "deformation",
    "texture change",
    "colour change",
)
#: The kinds :func:`estimate_kind` can return (the others need object knowledge; see the module docstring).
MEASURED_KINDS: tuple[str, ...] = ("scratch", "hole", "stain", "contamination / foreign particle", "texture change")
#: A region at least this many times longer than wide is elongated (a scratch).
ELONGATED = 3.0
#: Regions under this share of the image (0.5 %) are small.
SMALL_REGION = 0.005
#: Contrast (the region's core over the surroundings' own core deviation) from which a difference is clear.
CLEAR_CONTRAST = 1.5
#: Share of the region's pixels (the most deviating ones) whose mean deviation is its contrast.
CORE_SHARE = 0.1
#: A faint region with at most this share of its surroundings' fine detail is smoother than them (a texture change).
SMOOTHER = 0.6
#: A faint region whose median tone moved by this many times its surroundings' spread is a stain.
TONE_SHIFT = 0.5
#: Ring around the region: this many times the region's equivalent radius, at least 3 pixels wide.
_RING_FACTOR = 0.75


@dataclass(frozen=True)
class KindEstimate:
    """A measured guess of a defect's kind (None: cannot tell) and the measurements behind it."""

    #: one of :data:`MEASURED_KINDS`, or None when the rules cannot tell
    kind: str | None
    #: the rule that decided, in words ("elongated region, 5.1 x longer than wide", ...)
    reason: str
    #: the measurements: ``elongation``, ``area`` (share of the image), ``contrast`` and ``chroma_contrast``; for a
    #: faint region also ``fine_detail`` and ``tone_shift`` (rule 5)
    measurements: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON values (measurements rounded to 3 decimals)."""
        return {
            "kind": self.kind,
            "reason": self.reason,
            "measurements": {k: round(float(v), 3) for k, v in self.measurements.items()},
        }


def estimate_kind(
    image: "np.ndarray",
    anomaly_map: "np.ndarray",
    threshold: float = 0.5,
    texture_wide: bool = False,
) -> KindEstimate:
    """Guess the kind of the defect the calibrated ``anomaly_map`` locates in ``image`` (rules above).

    ``image``: H x W x 3 uint8 (or H x W grey); ``anomaly_map``: calibrated map of the same H x W
    (values in [0, 1]); ``texture_wide``: the finding's flag (:class:`myriad.findings.Findings`).
    """
    import numpy as np

    if texture_wide:
        return KindEstimate("texture change", "the defect spreads over the whole image", {})
    pixels = np.asarray(image)
    amap = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float32), nan=0.0)
    if pixels.shape[:2] != amap.shape:
        raise ValueError(f"image {pixels.shape[:2]} and anomaly map {amap.shape} must have the same height and width")
    from myriad.findings import located_region

    region = located_region(amap, threshold)
    if region is None or region.sum() < 3:
        return KindEstimate(None, "the map has no located region", {})
    area = float(region.mean())
    elongation = _elongation(region)
    lum, chroma = _channels(pixels)
    ring = _ring(region)
    contrast = _contrast(lum, region, ring)
    chroma_contrast = abs(_contrast(chroma, region, ring)) if chroma is not None else 0.0
    measured = {"elongation": elongation, "area": area, "contrast": contrast, "chroma_contrast": chroma_contrast}
    if elongation >= ELONGATED:
        return KindEstimate("scratch", f"elongated region, {elongation:.1f} x longer than wide", measured)
    if area < SMALL_REGION and contrast <= -CLEAR_CONTRAST:
        return KindEstimate("hole", f"small compact region, darker than its surroundings (contrast {contrast:.1f})", measured)
    if chroma_contrast >= CLEAR_CONTRAST and chroma_contrast > abs(contrast):
        return KindEstimate("stain", f"compact region of another colour (colour contrast {chroma_contrast:.1f})", measured)
    if abs(contrast) < CLEAR_CONTRAST and area >= SMALL_REGION:
        return _faint_kind(lum, chroma, region, ring, contrast, area, measured)
    if abs(contrast) >= CLEAR_CONTRAST:
        shade = "darker" if contrast < 0 else "brighter"
        return KindEstimate(
            "contamination / foreign particle", f"compact region, {shade} than its surroundings (contrast {contrast:.1f})", measured
        )
    return KindEstimate(None, f"compact region without a clear contrast (contrast {contrast:.1f})", measured)


def _faint_kind(
    lum: "np.ndarray", chroma: "np.ndarray | None", region: "np.ndarray", ring: "np.ndarray", contrast: float, area: float,
    measured: dict[str, float],
) -> KindEstimate:
    """Rule 5: a faint compact region is a texture change (smoother), a stain (tone shifted) or cannot tell."""
    from scipy import ndimage

    detail = _fine_detail(ndimage.laplace(lum), region, ring)
    shift = max(_tone_shift(lum, region, ring), _tone_shift(chroma, region, ring) if chroma is not None else 0.0)
    measured.update({"fine_detail": detail, "tone_shift": shift})
    faint = f"faint compact region (contrast {contrast:.1f}) over {100 * area:.1f} % of the image"
    if detail <= SMOOTHER:
        return KindEstimate("texture change", f"{faint}, smoother than its surroundings (fine detail {detail:.2f} x theirs)", measured)
    if shift >= TONE_SHIFT:
        return KindEstimate("stain", f"{faint}, its tone shifted by {shift:.1f} x the surroundings' spread", measured)
    return KindEstimate(None, f"{faint}, with no clear change of tone (shift {shift:.1f}) or sharpness", measured)


def _fine_detail(laplacian: "np.ndarray", region: "np.ndarray", ring: "np.ndarray") -> float:
    """Mean absolute Laplacian inside the region over the same around it (1: as detailed as the surroundings)."""
    import numpy as np

    around = float(np.abs(laplacian[ring]).mean()) if ring.any() else 0.0
    return float(np.abs(laplacian[region]).mean() / max(around, 1e-6))


def _tone_shift(channel: "np.ndarray", region: "np.ndarray", ring: "np.ndarray") -> float:
    """|median inside - median around| over the surroundings' standard deviation (at least half a level)."""
    import numpy as np

    around = channel[ring]
    if around.size == 0:
        return 0.0
    return float(abs(np.median(channel[region]) - np.median(around)) / max(float(around.std()), 0.5))


def _elongation(region: "np.ndarray") -> float:
    """sqrt of the ratio of the region's principal second moments (1 for a disc, L / W-like for a bar)."""
    import numpy as np

    rows, cols = np.nonzero(region)
    coords = np.stack([rows, cols]).astype(np.float64)
    cov = np.cov(coords) + np.eye(2) / 12.0  # a pixel's own extent keeps one-pixel-wide lines finite
    small, large = np.linalg.eigvalsh(cov)
    return float(np.sqrt(large / max(small, 1e-12)))


def _channels(pixels: "np.ndarray") -> tuple["np.ndarray", "np.ndarray | None"]:
    """Luminance (CIELAB L*) and chroma (sqrt(a*^2 + b*^2)); chroma None for a grey image."""
    import numpy as np

    if pixels.ndim == 2 or pixels.shape[2] == 1:
        grey = pixels.reshape(pixels.shape[:2]).astype(np.float64)
        return grey / (255.0 if pixels.dtype == np.uint8 else 1.0) * 100.0, None
    from skimage.color import rgb2lab

    rgb = pixels[..., :3].astype(np.float64) / (255.0 if pixels.dtype == np.uint8 else 1.0)
    lab = rgb2lab(np.clip(rgb, 0.0, 1.0))
    return lab[..., 0], np.hypot(lab[..., 1], lab[..., 2])


def _ring(region: "np.ndarray") -> "np.ndarray":
    """Pixels around the region (a band of width ~0.75 x its equivalent radius, at least 3 px)."""
    import numpy as np
    from scipy import ndimage

    radius = float(np.sqrt(region.sum() / np.pi))
    width = max(3, int(round(_RING_FACTOR * radius)))
    grown = ndimage.binary_dilation(region, iterations=width)
    ring = grown & ~region
    return ring if ring.any() else ~region


def _contrast(channel: "np.ndarray", region: "np.ndarray", ring: "np.ndarray") -> float:
    """Signed mean deviation of the region's core from the ring's median, over the ring's own core deviation."""
    import numpy as np

    around = channel[ring]
    if around.size == 0:
        return 0.0
    centre = float(np.median(around))
    baseline = _core(np.abs(around - centre))
    scale = max(baseline, 0.5)  # a flat surround: half a level (of 100) is the noise floor
    return float(_core(channel[region] - centre) / scale)


def _core(deviation: "np.ndarray") -> float:
    """Mean of the :data:`CORE_SHARE` largest deviations by magnitude, with their signs."""
    import numpy as np

    core = max(1, int(np.ceil(CORE_SHARE * deviation.size)))
    return float(deviation[np.argsort(np.abs(deviation))[-core:]].mean())
