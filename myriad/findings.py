"""Findings: what the expert's calibrated map says about one image, measured, not generated.

:func:`measure_findings` turns a calibrated anomaly map (H x W in [0, 1], decision threshold 0.5)
and the image's calibrated score and decision into :class:`Findings`: the verdict, where the
defect is, how much of the image it covers, how many separate regions it has and how severe it
is. Every number comes from the map and the score; the kind, when the image is given, from the
located region's shape and the image's contrast there (:mod:`myriad.defect_kinds`).
:mod:`myriad.answers_text` words the findings as short, true sentences.

The rules (documented for users in ``docs/findings.md``):

- **verdict**: the expert's calibrated decision (``anomalous`` / ``normal``). A normal verdict
  reports no defect: region, extent bucket and severity None, extent 0, count 0.
- **defective pixels**: map values above ``threshold`` (0.5, the decision threshold).
- **count**: connected regions of defective pixels (8-connected) of at least
  :data:`MIN_REGION_FRACTION` of the image (smaller specks are not counted); at least 1 when
  the verdict is anomalous.
- **extent**: the share of the image's pixels that are defective; **extent bucket**: ``small``
  below :data:`SMALL_EXTENT`, ``large`` above :data:`LARGE_EXTENT`, ``medium`` between.
- **region**: the cell of the 3 x 3 grid (:data:`myriad.training.answers.REGIONS`, the cells
  of :func:`~myriad.training.answers.defect_region`) holding the centroid of the largest region,
  each pixel weighted by how far it is above the threshold.
- **texture-wide**: defective pixels cover more than :data:`TEXTURE_WIDE_FRACTION` of the image,
  or the caller says so (a fused expert whose image-level member fired while no local member
  did, :func:`texture_wide_from_members`); the region is then :data:`WHOLE_IMAGE`.
- **anomalous without defective pixels** (an image-level score above the threshold while the
  map stays below it): the map's maximum gives the region and count is 1; the extent is the
  connected area around the maximum where the map is at least halfway between its minimum and
  its maximum (:data:`RELATIVE_LEVEL`). A flat map there has no location: texture-wide, extent 1.
- **severity**: from the calibrated score: ``low`` below :data:`MEDIUM_SEVERITY`, ``high`` from
  :data:`HIGH_SEVERITY`, ``medium`` between.
- **kind** (only when the image is given): a measured guess from the located region's shape and the
  image's contrast there, :func:`myriad.defect_kinds.estimate_kind`; None when its rules cannot tell.
- **not located** (``located=False``): the verdict is anomalous but the expert did not flag the image
  (the LMM's Yes over a map the expert calls normal; ``unlocated_reason`` :data:`BELOW_THRESHOLD`). The
  map then has no defect to measure: region, extent bucket and kind are None, extent and count 0,
  ``located`` False; the severity still comes from the (sub-threshold) score. Answers say the map does
  not locate it rather than name the map's strongest area, which was wrong more often than right in
  that case (``docs/findings.md``). The caller also marks a few-shot fusion whose image-level member
  fired alone as not located (:data:`IMAGE_LEVEL_ONLY`): with few references that member fires on
  local defects and normal images too, so "across the whole image" would more often be wrong than right.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "BELOW_THRESHOLD",
    "HIGH_SEVERITY",
    "IMAGE_LEVEL_ONLY",
    "IMAGE_LEVEL_MEMBERS",
    "LARGE_EXTENT",
    "MEDIUM_SEVERITY",
    "MIN_REGION_FRACTION",
    "RELATIVE_LEVEL",
    "SMALL_EXTENT",
    "TEXTURE_WIDE_FRACTION",
    "UNLOCATED_REASONS",
    "WHOLE_IMAGE",
    "Findings",
    "extent_bucket",
    "located_region",
    "measure_findings",
    "severity_of",
    "texture_wide_from_members",
]

#: Extent below this share of the image (1 %) is ``small``.
SMALL_EXTENT = 0.01
#: Extent above this share of the image (10 %) is ``large``; from SMALL_EXTENT up to it, ``medium``.
LARGE_EXTENT = 0.10
#: Connected regions smaller than this share of the image (0.01 %) are specks, not counted.
MIN_REGION_FRACTION = 1e-4
#: Defective pixels over more than this share of the image (50 %) make a defect texture-wide.
TEXTURE_WIDE_FRACTION = 0.5
#: Calibrated scores from here (0.65) are ``medium`` severity; from the threshold up to here, ``low``.
MEDIUM_SEVERITY = 0.65
#: Calibrated scores from here (0.85) are ``high`` severity.
HIGH_SEVERITY = 0.85
#: Without defective pixels: the extent is where the map reaches this fraction of the way from its minimum to its maximum.
RELATIVE_LEVEL = 0.5
#: The region of a texture-wide defect.
WHOLE_IMAGE = "across the whole image"
#: ``unlocated_reason``: the verdict is anomalous but no area of the expert's map passes the threshold
#: (the LMM's Yes over a map the expert calls normal).
BELOW_THRESHOLD = "below_threshold"
#: ``unlocated_reason``: only an image-level member fired, with few references (few-shot), where its
#: "across the whole image" was wrong more often than right (``docs/findings.md``).
IMAGE_LEVEL_ONLY = "image_level_only"
UNLOCATED_REASONS = (BELOW_THRESHOLD, IMAGE_LEVEL_ONLY)
#: Fused experts' members whose maps are image-level (one value over the whole image): when one of
#: them fires and no other member does, the defect is texture-wide.
IMAGE_LEVEL_MEMBERS = ("global",)


@dataclass(frozen=True)
class Findings:
    """What the calibrated map and score say about one image (see the module docstring for the rules)."""

    #: ``anomalous`` or ``normal``: the expert's calibrated decision
    verdict: str
    #: a 3 x 3 cell name (``top left`` ... ``bottom right``), :data:`WHOLE_IMAGE`, or None when normal
    region: str | None
    #: share of the image's pixels above the threshold, in [0, 1]
    extent: float
    #: ``small`` / ``medium`` / ``large``; None when normal
    extent_bucket: str | None
    #: separate defective regions (specks not counted); 0 when normal
    count: int
    #: ``low`` / ``medium`` / ``high``; None when normal
    severity: str | None
    #: whether the defect spreads over the image rather than sitting in one place
    texture_wide: bool
    #: the calibrated image score the verdict and severity come from
    score: float
    #: a kind of :data:`myriad.defect_kinds.MEASURED_KINDS`, or None (normal, not measured, or cannot tell)
    kind: str | None = None
    #: why that kind (the rule and its measurement, :class:`myriad.defect_kinds.KindEstimate`); '' when not measured
    kind_reason: str = ""
    #: False when the verdict is anomalous but the expert's map holds no defect to measure (see the module docstring)
    located: bool = True
    #: why an anomalous finding is not located: :data:`BELOW_THRESHOLD` or :data:`IMAGE_LEVEL_ONLY`; '' when located
    unlocated_reason: str = ""

    @property
    def anomalous(self) -> bool:
        """Whether the verdict is ``anomalous``."""
        return self.verdict == "anomalous"

    def as_dict(self) -> dict[str, Any]:
        """The findings as JSON values (extent and score rounded to 6 decimals)."""
        record = asdict(self)
        record["extent"] = round(self.extent, 6)
        record["score"] = round(self.score, 6)
        return record


def extent_bucket(extent: float) -> str:
    """``small`` (< 1 %), ``medium`` (1 % to 10 %) or ``large`` (> 10 %) for a share of the image."""
    if extent < SMALL_EXTENT:
        return "small"
    return "large" if extent > LARGE_EXTENT else "medium"


def severity_of(score: float) -> str:
    """``low`` (score < 0.65), ``medium`` (0.65 to < 0.85) or ``high`` (>= 0.85) for a calibrated score."""
    if score >= HIGH_SEVERITY:
        return "high"
    return "medium" if score >= MEDIUM_SEVERITY else "low"


def texture_wide_from_members(members: Mapping[str, Mapping[str, Any]] | None) -> bool | None:
    """For a fused detection (:attr:`myriad.detector.Detection.members`): True when an image-level member
    (:data:`IMAGE_LEVEL_MEMBERS`) fired and no other member did; None for one expert or without an image-level member."""
    if not members:
        return None
    image_level = [name for name in members if name in IMAGE_LEVEL_MEMBERS]
    local = [name for name in members if name not in IMAGE_LEVEL_MEMBERS]
    if not image_level or not local:
        return None
    fired = {name for name, member in members.items() if member.get("anomalous")}
    return bool(fired.intersection(image_level)) and not fired.intersection(local)


def measure_findings(
    anomaly_map: "np.ndarray",
    score: float,
    anomalous: bool,
    threshold: float = 0.5,
    texture_wide: bool | None = None,
    image: "np.ndarray | None" = None,
    located: bool = True,
    unlocated_reason: str = BELOW_THRESHOLD,
) -> Findings:
    """Measure the findings of one image from its calibrated map, score and decision.

    ``anomaly_map``: H x W calibrated map (values in [0, 1]; NaN counts as 0); ``score`` and
    ``anomalous``: the calibrated image score and decision (:class:`myriad.detector.Detection`);
    ``threshold``: the decision threshold on the map; ``texture_wide``: True forces a texture-wide
    finding (see :func:`texture_wide_from_members`), None or False leaves it to the map's extent;
    ``image``: the inspected image (H x W x 3, the map's H x W): when given, an anomalous finding also
    gets a measured ``kind`` (:func:`myriad.defect_kinds.estimate_kind`); ``located=False``: the verdict
    is anomalous but nothing in the map locates it, so nothing is measured (see the module docstring), for
    ``unlocated_reason`` (:data:`BELOW_THRESHOLD`: the expert did not flag the image; :data:`IMAGE_LEVEL_ONLY`:
    only a few-shot image-level member did).
    """
    import numpy as np

    amap = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if amap.ndim != 2 or amap.size == 0:
        raise ValueError(f"anomaly_map must be a non-empty H x W array, got shape {amap.shape}")
    score = float(score)
    if not anomalous:
        return Findings("normal", None, 0.0, None, 0, None, False, score)
    if not located:
        if unlocated_reason not in UNLOCATED_REASONS:
            raise ValueError(f"unlocated_reason must be one of {UNLOCATED_REASONS}, got {unlocated_reason!r}")
        return Findings("anomalous", None, 0.0, None, 0, severity_of(score), False, score, located=False,
                        unlocated_reason=unlocated_reason)
    above = amap > threshold
    if above.any():
        findings = _from_defective_pixels(amap, above, score, threshold, bool(texture_wide))
    else:
        findings = _from_peak(amap, score, bool(texture_wide))
    if image is None:
        return findings
    from dataclasses import replace

    from myriad.defect_kinds import estimate_kind

    guess = estimate_kind(image, amap, threshold, findings.texture_wide)
    return replace(findings, kind=guess.kind, kind_reason=guess.reason)


def _anomalous(region: str, extent: float, count: int, texture_wide: bool, score: float) -> Findings:
    bucket, severity = extent_bucket(extent), severity_of(score)
    return Findings("anomalous", region, float(extent), bucket, int(count), severity, texture_wide, score)


def _from_defective_pixels(
    amap: "np.ndarray", above: "np.ndarray", score: float, threshold: float, forced_wide: bool
) -> Findings:
    """Findings where some pixels exceed the threshold: connected regions, extent, weighted centroid."""
    import numpy as np
    from scipy import ndimage

    extent = float(above.mean())
    labels, n = ndimage.label(above, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    min_pixels = max(1, int(np.ceil(MIN_REGION_FRACTION * amap.size)))
    count = max(1, int((sizes >= min_pixels).sum()))
    if forced_wide or extent > TEXTURE_WIDE_FRACTION:
        return _anomalous(WHOLE_IMAGE, extent, count, True, score)
    largest = int(np.argmax(sizes)) + 1
    rows, cols = np.nonzero(labels == largest)
    weights = amap[rows, cols].astype(np.float64) - threshold
    total = float(weights.sum())
    row = float(weights @ rows.astype(np.float64)) / total  # float products: integer dot products are slow
    col = float(weights @ cols.astype(np.float64)) / total
    return _anomalous(_cell(row, col, amap.shape), extent, count, False, score)


def _from_peak(amap: "np.ndarray", score: float, forced_wide: bool) -> Findings:
    """Findings of an anomalous image whose map stays below the threshold (an image-level score)."""
    import numpy as np

    region = None if forced_wide else _peak_area(amap)
    if region is None:  # no location in the map
        return _anomalous(WHOLE_IMAGE, 1.0, 1, True, score)
    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    return _anomalous(_cell(float(peak[0]), float(peak[1]), amap.shape), float(region.mean()), 1, False, score)


def located_region(amap: "np.ndarray", threshold: float = 0.5) -> "np.ndarray | None":
    """The region the findings locate, as a boolean H x W mask: the largest 8-connected region above
    ``threshold``; without one, the connected area around the map's maximum where the map is at least
    :data:`RELATIVE_LEVEL` of the way from its minimum to its maximum; None for a flat map (no location)."""
    import numpy as np
    from scipy import ndimage

    above = amap > threshold
    if above.any():
        labels, n = ndimage.label(above, structure=np.ones((3, 3), dtype=bool))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        return labels == int(np.argmax(sizes)) + 1
    return _peak_area(amap)


def _peak_area(amap: "np.ndarray") -> "np.ndarray | None":
    """The connected area around the map's maximum at least :data:`RELATIVE_LEVEL` of the way up; None for a flat map."""
    import numpy as np
    from scipy import ndimage

    low, high = float(amap.min()), float(amap.max())
    if high - low <= 1e-6:
        return None
    peak = np.unravel_index(int(np.argmax(amap)), amap.shape)
    labels, _ = ndimage.label(amap >= low + RELATIVE_LEVEL * (high - low), structure=np.ones((3, 3), dtype=bool))
    return labels == labels[peak]


def _cell(row: float, col: float, shape: tuple[int, ...]) -> str:
    """The grid region of the pixel holding the point (``row``, ``col``) (pixel centres at integers)."""
    import math

    from myriad.training.answers import region_at

    return region_at(math.floor(row + 0.5), math.floor(col + 0.5), shape)
