"""Subtle, real-sized defects for the realistic dev set, and how visible each one is.

A painter works on the *material* (the photo seen through a pose, before lighting and
sensor noise; see :mod:`myriad.synthetic.realistic_photos`) and returns an
:class:`Alteration`: the altered material and, for local kinds, the per-pixel strength of
the change (``alpha``). The ground-truth mask is exactly ``alpha > 0``: alphas below
:data:`ALPHA_FLOOR` are cut to zero before blending, so no pixel outside the mask changes
and the mask's outline is the alteration's own irregular outline, not a geometric shape.
Texture-wide kinds change the whole image (full mask).

Kinds (sizes for a 256 px crop; they scale with the crop side):

========================  ============  =================================================================
kind                      family        what changes
========================  ============  =================================================================
``scratch_thin``          local         1-2 px curved line, partly interrupted, +-5..22 grey levels
``pinhole``               local         3-4.5 px dark hole (5-30 % darker), texture half filled in
``stain_soft``            local         soft irregular patchy blob, 2-7 % brightness (and tint on colour photos)
``thread_pull``           local         texture displaced 1-3 px along/across a curve in a 3-8 px band
``particle``              local         irregular 5-18 px speck textured from ANOTHER photo, 35-90 % opaque, tone within 2-8 %
``texture_density``       texture-wide  whole crop resampled 3-7 % denser or coarser (native-resolution source)
``texture_orientation``   texture-wide  turned 4-8 degrees beyond the normal +-2 (oriented photos only)
``texture_blur``          texture-wide  Gaussian blur, sigma 0.3-0.7 px  
``texture_noise``         texture-wide  extra sensor noise, sigma 2-5 grey levels (normal: 0.8-2)  
========================  ============  =================================================================

:data:`REALISTIC_EVAL_KINDS` (the above) are reserved for evaluation; the disjoint
:data:`REALISTIC_TRAIN_KINDS` (``scuff``, ``dent_shade``, ``texture_contrast``,
``texture_warp``) are the only realistic kinds that may ever be used to train Myriad's LMM.

Over 400 lines on purpose: a catalogue of defect kinds, one short function each, plus the visibility measure they all report; a kind is read in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from myriad.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from myriad.synthetic.realistic_photos import Pose

__all__ = [
    "Scene",
    "Alteration",
    "RealisticKind",
    "REALISTIC_KINDS",
    "REALISTIC_EVAL_KINDS",
    "REALISTIC_TRAIN_KINDS",
    "ALPHA_FLOOR",
    "get_realistic_kind",
    "local_visibility",
    "texture_descriptor",
    "global_visibility",
]

#: Alteration strengths below this are cut to zero, so that ``mask = alpha > 0`` holds every changed pixel.
ALPHA_FLOOR = 0.15


@dataclass
class Scene:
    """What a painter may look at: the clean material, its pose and a source of foreign material."""

    category: str
    material: "np.ndarray"  # float32 size x size x C (C = 1 grey, 3 colour), grey levels
    pose: "Pose"
    size: int
    colour: bool
    oriented: bool
    render: Callable[["Pose"], "np.ndarray"]  # the same photo through another pose
    donor: Callable[["np.random.Generator", int], tuple[str, "np.ndarray"]]  # (photo, side x side x C patch) of ANOTHER photo


@dataclass
class Alteration:
    """A painter's result: altered material, the change's strength (None = whole image) and its parameters."""

    material: "np.ndarray"
    alpha: "np.ndarray | None" = None
    extra_noise: float = 0.0  # added sensor noise, grey levels (texture_noise)
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RealisticKind:
    """One realistic defect kind."""

    name: str
    family: str  # "local" or "texture-wide"
    split: str  # "eval" or "train"
    description: str
    paint: Callable[[Scene, "np.random.Generator"], Alteration]
    needs_orientation: bool = False

    @property
    def is_global(self) -> bool:
        """Whether the kind changes the whole image."""
        return self.family == "texture-wide"

    def as_dict(self) -> dict:
        """JSON-ready description."""
        return {"family": self.family, "split": self.split, "global": self.is_global, "description": self.description,
                "needs_orientation": self.needs_orientation}


# --------------------------------------------------------------------------- shape helpers


def _floor(alpha: "np.ndarray") -> "np.ndarray":
    import numpy as np

    alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    alpha[alpha < ALPHA_FLOOR] = 0.0
    return alpha


def _smooth_1d(rng: "np.random.Generator", n: int, sigma: float) -> "np.ndarray":
    """Smooth noise of length ``n`` scaled to [0, 1]."""
    import numpy as np
    from scipy.ndimage import gaussian_filter1d

    raw = gaussian_filter1d(rng.standard_normal(n + 8), max(sigma, 0.5), mode="reflect")[4 : n + 4]
    span = raw.max() - raw.min()
    return (raw - raw.min()) / span if span > 0 else np.full(n, 0.5)


def _smooth_2d(rng: "np.random.Generator", size: int, sigma: float) -> "np.ndarray":
    """Smooth 2-D noise scaled to [0, 1]."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    raw = gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), max(sigma, 0.5), mode="reflect")
    span = raw.max() - raw.min()
    return (raw - raw.min()) / span if span > 0 else np.full((size, size), 0.5, np.float32)


def _centre(rng: "np.random.Generator", size: int, margin: float) -> tuple[float, float]:
    margin = min(margin, size / 2 - 1)
    return float(rng.uniform(margin, size - margin)), float(rng.uniform(margin, size - margin))


def _curve(rng: "np.random.Generator", size: int, length: float, bend: float) -> "np.ndarray":
    """Points (N x 2, y x) every 0.5 px along a smoothly bending curve of ``length`` pixels."""
    import numpy as np

    n = max(4, int(length / 0.5))
    y, x = _centre(rng, size, 0.12 * size)
    heading = rng.uniform(0, 2 * math.pi) + np.cumsum(
        (rng.uniform(-bend, bend) + 0.5 * bend * (_smooth_1d(rng, n, n / 6) - 0.5)) * 0.5 * np.ones(n)
    )
    steps = 0.5 * np.stack([np.sin(heading), np.cos(heading)], axis=1)
    points = np.array([y, x]) + np.cumsum(steps, axis=0) - steps.sum(axis=0) / 2  # centred on (y, x)
    return points


def _near_curve(points: "np.ndarray", size: int, reach: float) -> tuple["np.ndarray", "np.ndarray"]:
    """Distance of every pixel to the curve (inf beyond ``reach``) and the index of the nearest point."""
    import numpy as np
    from scipy.spatial import cKDTree

    dist = np.full((size, size), np.inf, dtype=np.float32)
    index = np.zeros((size, size), dtype=np.int64)
    y0, y1 = int(max(0, math.floor(points[:, 0].min() - reach))), int(min(size, math.ceil(points[:, 0].max() + reach) + 1))
    x0, x1 = int(max(0, math.floor(points[:, 1].min() - reach))), int(min(size, math.ceil(points[:, 1].max() + reach) + 1))
    if y1 <= y0 or x1 <= x0:
        return dist, index
    gy, gx = np.mgrid[y0:y1, x0:x1]
    d, i = cKDTree(points).query(np.stack([gy.ravel(), gx.ravel()], axis=1), distance_upper_bound=reach)
    found = np.isfinite(d)
    sub_d = np.full(d.shape, np.inf, dtype=np.float32)
    sub_d[found] = d[found]
    sub_i = np.where(found, i, 0)
    dist[y0:y1, x0:x1] = sub_d.reshape(gy.shape)
    index[y0:y1, x0:x1] = sub_i.reshape(gy.shape)
    return dist, index


def _along(rng: "np.random.Generator", n: int, partial: float) -> "np.ndarray":
    """Strength along a curve of ``n`` points: tapered ends, interrupted where smooth noise is low."""
    import numpy as np

    t = np.linspace(0, 1, n)
    taper = np.clip(np.minimum(t, 1 - t) / 0.15, 0, 1)
    gaps = np.clip((_smooth_1d(rng, n, n / 10) - partial) / 0.25 + 0.5, 0, 1)
    return (taper * gaps).astype(np.float32)


def _blob(rng: "np.random.Generator", size: int, centre: tuple[float, float], radius: float, irregularity: float, soft: float) -> "np.ndarray":
    """Alpha in [0, 1] of an irregular blob with a radius wobbling with angle and a soft edge ``soft`` px wide."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    turn = rng.uniform(0, math.pi)
    stretch = rng.uniform(1.0, 1.5)
    ry = dy * math.cos(turn) + dx * math.sin(turn)
    rx = -dy * math.sin(turn) + dx * math.cos(turn)
    theta = np.arctan2(ry, rx / stretch)
    wobble = np.ones_like(theta)
    for harmonic in range(2, 6):
        wobble += rng.uniform(0, irregularity / harmonic) * np.cos(harmonic * theta + rng.uniform(0, 2 * math.pi))
    distance = np.hypot(ry, rx / stretch)
    edge = radius * np.clip(wobble, 0.4, None)
    return np.clip((edge - distance) / max(soft, 0.5) + 0.5, 0, 1).astype(np.float32)


def _blend(material: "np.ndarray", target: "np.ndarray", alpha: "np.ndarray") -> "np.ndarray":
    return (material + alpha[..., None] * (target - material)).astype("float32")


def _local_stats(material: "np.ndarray", centre: tuple[float, float], radius: float) -> tuple["np.ndarray", float]:
    """Per-channel mean and grey std of the material in a square of side ``4 * radius`` around ``centre``."""
    size = material.shape[0]
    r = max(4, int(2 * radius))
    y, x = int(centre[0]), int(centre[1])
    window = material[max(0, y - r) : min(size, y + r + 1), max(0, x - r) : min(size, x + r + 1)]
    return window.reshape(-1, window.shape[2]).mean(axis=0), float(window.mean(axis=2).std())


# --------------------------------------------------------------------------- evaluation kinds (local)


def scratch_thin(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """A thin (1-2 px), curved, partly interrupted line slightly brighter or darker than the surface."""
    k = scene.size / 256
    points = _curve(rng, scene.size, rng.uniform(20, 150) * k, 1 / 40)
    width = float(rng.uniform(1.0, 2.2))
    dist, index = _near_curve(points, scene.size, width / 2 + 1.0)
    strength = _along(rng, len(points), partial=float(rng.uniform(0.0, 0.35)))
    profile = (width / 2 + 0.5 - dist).clip(0, 1)
    alpha = _floor(profile * strength[index])
    amount = float(rng.uniform(5, 22)) * (1 if rng.random() < 0.7 else -1)
    return Alteration(_blend(scene.material, scene.material + amount, alpha), alpha,
                      params={"width_px": round(width, 2), "grey_levels": round(amount, 1)})


def pinhole(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """A tiny dark hole: texture half filled in and 5-30 % darker, with a soft rim."""
    from scipy.ndimage import gaussian_filter

    k = scene.size / 256
    centre = _centre(rng, scene.size, 8 * k)
    radius = float(rng.uniform(3.0, 4.5)) * k
    alpha = _floor(_blob(rng, scene.size, centre, radius, irregularity=0.25, soft=1.2))
    depth = float(rng.uniform(0.05, 0.3))
    smooth = gaussian_filter(scene.material, sigma=(3, 3, 0), mode="reflect")
    fill = (0.5 * smooth + 0.5 * scene.material) * (1 - depth)
    return Alteration(_blend(scene.material, fill, alpha), alpha, params={"radius_px": round(radius, 2), "darker": round(depth, 3)})


def stain_soft(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """A soft, irregular, patchy blob a few percent brighter or darker (tinted on colour photos)."""
    import numpy as np

    k = scene.size / 256
    radius = float(math.exp(rng.uniform(math.log(5), math.log(28)))) * k
    centre = _centre(rng, scene.size, radius + 4)
    shape = _blob(rng, scene.size, centre, radius, irregularity=0.4, soft=0.35 * radius)
    patchy = 0.5 + 0.5 * _smooth_2d(rng, scene.size, max(1.0, radius / 3))
    alpha = _floor(shape * patchy)
    change = float(rng.uniform(0.02, 0.07)) * (1 if rng.random() < 0.5 else -1)
    channels = scene.material.shape[2]
    factor = 1 + change + (rng.uniform(-0.02, 0.02, channels) if scene.colour else np.zeros(channels))
    return Alteration(_blend(scene.material, scene.material * factor.astype(np.float32), alpha), alpha,
                      params={"radius_px": round(radius, 1), "brightness": round(change, 3)})


def thread_pull(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """A fibre/thread fault: the texture in a narrow band along a curve is pulled 1-3 px sideways or along it."""
    import numpy as np
    from scipy.ndimage import map_coordinates

    k = scene.size / 256
    points = _curve(rng, scene.size, rng.uniform(25, 110) * k, 1 / 80)
    half = float(rng.uniform(1.5, 4.0)) * k
    dist, index = _near_curve(points, scene.size, half + 1)
    tangent = np.gradient(points, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-9
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    mix = float(rng.uniform(0, math.pi / 2))
    direction = math.cos(mix) * normal + math.sin(mix) * tangent
    raw = np.clip(1 - dist / half, 0, 1) ** 1.5 * _along(rng, len(points), partial=float(rng.uniform(0.0, 0.3)))[index]
    alpha = _floor(raw)
    shift = float(rng.uniform(1.0, 3.0)) * k
    yy, xx = np.mgrid[0 : scene.size, 0 : scene.size].astype(np.float32)
    dy = shift * raw * direction[index, 0]
    dx = shift * raw * direction[index, 1]
    pulled = np.stack(
        [map_coordinates(scene.material[..., c], [yy - dy, xx - dx], order=1, mode="reflect") for c in range(scene.material.shape[2])],
        axis=2,
    )
    tone = 1 + float(rng.uniform(-0.03, 0.03)) * alpha[..., None]
    out = np.where(alpha[..., None] > 0, pulled * tone, scene.material).astype(np.float32)
    return Alteration(out, alpha, params={"shift_px": round(shift, 2), "band_px": round(2 * half, 1)})


def particle(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """A small irregular, partly transparent foreign speck textured from another photo, near the local tone."""
    import numpy as np

    k = scene.size / 256
    radius = float(rng.uniform(2.5, 9.0)) * k
    centre = _centre(rng, scene.size, radius + 4)
    opacity = float(rng.uniform(0.35, 0.9))  # dust and fibres are partly transparent
    alpha = _floor(opacity * _blob(rng, scene.size, centre, radius, irregularity=0.8, soft=0.8))
    side = scene.size
    donor_name, patch = scene.donor(rng, side)
    mean, std = _local_stats(scene.material, centre, radius)
    grey = patch.mean(axis=2, keepdims=True)
    spread = float(grey.std()) or 1.0
    tone = 1 + float(rng.uniform(0.02, 0.08)) * (1 if rng.random() < 0.5 else -1)
    target = (patch - patch.reshape(-1, patch.shape[2]).mean(axis=0)) / spread * (std * rng.uniform(0.3, 0.8)) + mean * tone
    return Alteration(_blend(scene.material, target.astype(np.float32), alpha), alpha,
                      params={"radius_px": round(radius, 1), "donor": donor_name, "tone": round(tone, 3), "opacity": round(opacity, 2)})


# --------------------------------------------------------------------------- evaluation kinds (texture-wide)


def _repose(scene: Scene, **changes: float) -> "np.ndarray":
    from dataclasses import replace

    return scene.render(replace(scene.pose, **changes))


def texture_density(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """The whole crop resampled a few percent denser (from a larger native window) or coarser."""
    change = float(rng.uniform(0.03, 0.07)) * (1 if rng.random() < 0.5 else -1)
    return Alteration(_repose(scene, scale=1 + change), params={"scale": round(1 + change, 4)})


def texture_orientation(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """The whole texture turned 4-8 degrees further than the normal +-2 degrees."""
    turn = float(rng.uniform(4.0, 8.0))
    angle = scene.pose.angle + (turn if scene.pose.angle >= 0 else -turn)
    return Alteration(_repose(scene, angle=angle), params={"extra_degrees": round(turn, 2)})


def texture_blur(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """Slightly out of focus: Gaussian blur of 0.3-0.7 px over the whole image."""
    from scipy.ndimage import gaussian_filter

    sigma = float(rng.uniform(0.3, 0.7))
    return Alteration(gaussian_filter(scene.material, sigma=(sigma, sigma, 0), mode="reflect"), params={"sigma_px": round(sigma, 3)})


def texture_noise(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """More sensor noise over the whole image: an extra 2-5 grey levels standard deviation."""
    sigma = float(rng.uniform(2.0, 5.0))
    return Alteration(scene.material, extra_noise=sigma, params={"extra_sigma": round(sigma, 2)})


# --------------------------------------------------------------------------- training kinds (never in the realistic preset)


def scuff(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """Abrasion: a small patch of short, faint, parallel bright lines."""
    import numpy as np

    k = scene.size / 256
    centre = _centre(rng, scene.size, 24 * k)
    heading = rng.uniform(0, math.pi)
    total = np.zeros((scene.size, scene.size), np.float32)
    for _ in range(int(rng.integers(5, 12))):
        offset = rng.uniform(-12, 12, 2) * k
        length = rng.uniform(8, 25) * k
        t = np.arange(0, length, 0.5)
        start = np.array(centre) + offset
        points = start + np.stack([np.sin(heading) * t, np.cos(heading) * t], axis=1)
        dist, _ = _near_curve(points, scene.size, 1.5)
        total = np.maximum(total, (1.0 - dist).clip(0, 1))
    alpha = _floor(total)
    amount = float(rng.uniform(4, 15))
    return Alteration(_blend(scene.material, scene.material + amount, alpha), alpha, params={"grey_levels": round(amount, 1)})


def dent_shade(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """A shallow dent: a soft blob lit from one side (one half brighter, the other darker)."""
    import numpy as np

    k = scene.size / 256
    radius = float(rng.uniform(6, 20)) * k
    centre = _centre(rng, scene.size, radius + 4)
    shape = _blob(rng, scene.size, centre, radius, irregularity=0.2, soft=0.5 * radius)
    yy, xx = np.mgrid[0 : scene.size, 0 : scene.size].astype(np.float32)
    light = rng.uniform(0, 2 * math.pi)
    side = ((yy - centre[0]) * math.sin(light) + (xx - centre[1]) * math.cos(light)) / radius
    alpha = _floor(shape)
    depth = float(rng.uniform(0.03, 0.08))
    target = scene.material * (1 + depth * np.clip(side, -1, 1))[..., None]
    return Alteration(_blend(scene.material, target, alpha), alpha, params={"shade": round(depth, 3)})


def texture_contrast(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """Whole-image contrast changed by 5-12 %."""
    return contrast_change(scene, float(rng.uniform(0.05, 0.12)) * (1 if rng.random() < 0.5 else -1))


def contrast_change(scene: Scene, change: float) -> Alteration:
    """The whole material's contrast around its mean scaled by ``1 + change``."""
    mean = scene.material.mean(axis=(0, 1), keepdims=True)
    return Alteration((mean + (scene.material - mean) * (1 + change)).astype("float32"), params={"contrast": round(change, 3)})


def texture_warp(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """A smooth elastic warp of 0.8-2 px over the whole image (material stretched unevenly)."""
    return elastic_warp(scene, rng, float(rng.uniform(0.8, 2.0)))


def elastic_warp(scene: Scene, rng: "np.random.Generator", amount: float) -> Alteration:
    """The whole material displaced by smooth random fields of up to ``amount`` px (correlation 20-40 px)."""
    import numpy as np
    from scipy.ndimage import map_coordinates

    length = float(rng.uniform(20, 40)) * scene.size / 256
    dy = (_smooth_2d(rng, scene.size, length) - 0.5) * 2 * amount
    dx = (_smooth_2d(rng, scene.size, length) - 0.5) * 2 * amount
    yy, xx = np.mgrid[0 : scene.size, 0 : scene.size].astype(np.float32)
    out = np.stack([map_coordinates(scene.material[..., c], [yy + dy, xx + dx], order=1, mode="reflect")
                    for c in range(scene.material.shape[2])], axis=2)
    return Alteration(out.astype(np.float32), params={"warp_px": round(amount, 2)})


def _kinds() -> dict[str, RealisticKind]:
    entries = [
        (scratch_thin, "local", "eval", False),
        (pinhole, "local", "eval", False),
        (stain_soft, "local", "eval", False),
        (thread_pull, "local", "eval", False),
        (particle, "local", "eval", False),
        (texture_density, "texture-wide", "eval", False),
        (texture_orientation, "texture-wide", "eval", True),
        (texture_blur, "texture-wide", "eval", False),
        (texture_noise, "texture-wide", "eval", False),
        (scuff, "local", "train", False),
        (dent_shade, "local", "train", False),
        (texture_contrast, "texture-wide", "train", False),
        (texture_warp, "texture-wide", "train", False),
    ]
    return {
        f.__name__: RealisticKind(f.__name__, family, split, (f.__doc__ or "").strip(), f, needs_orientation=oriented)
        for f, family, split, oriented in entries
    }


REALISTIC_KINDS: dict[str, RealisticKind] = _kinds()
#: Kinds the realistic dev set is made of: reserved for evaluation, never for training Myriad's LMM.
REALISTIC_EVAL_KINDS: tuple[str, ...] = tuple(k for k, v in REALISTIC_KINDS.items() if v.split == "eval")
#: The only realistic kinds that may be used to make LMM training data (disjoint from the evaluation kinds).
REALISTIC_TRAIN_KINDS: tuple[str, ...] = tuple(k for k, v in REALISTIC_KINDS.items() if v.split == "train")


def get_realistic_kind(name: str) -> RealisticKind:
    """The realistic defect kind ``name``; :class:`ConfigError` lists the available ones."""
    try:
        return REALISTIC_KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown realistic defect kind {name!r}; available: {', '.join(REALISTIC_KINDS)}") from None


# --------------------------------------------------------------------------- visibility


def local_visibility(clean: "np.ndarray", defective: "np.ndarray", mask: "np.ndarray") -> tuple[float, float]:
    """``(visibility, contrast)`` of a local defect, both in units of the surrounding texture's std.

    A ring around the mask (from 2 px to ``max(4, sqrt(area) / 2)`` px outside it) stands for
    the local texture. ``visibility`` = RMS grey change inside the mask / std of the clean
    ring: how strong the alteration is against the texture's own clutter (it also sees
    displacements that keep the mean). ``contrast`` = |mean inside - mean of the ring| / std
    of the ring, both on the defective image (the classic local-contrast measure).
    """
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    from myriad.synthetic.realistic_photos import luminance

    area = int(mask.sum())
    if area == 0:
        return 0.0, 0.0
    reach = max(4.0, math.sqrt(area) / 2)
    ys, xs = np.nonzero(mask)
    pad = int(reach) + 3
    y0, y1 = max(0, ys.min() - pad), min(mask.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(mask.shape[1], xs.max() + pad + 1)
    sub = mask[y0:y1, x0:x1]
    outside = distance_transform_edt(~sub)
    ring = (outside > 2) & (outside <= reach + 2)
    before = luminance(clean[y0:y1, x0:x1])
    after = luminance(defective[y0:y1, x0:x1])
    texture = float(before[ring].std()) if ring.any() else 0.0
    texture = max(texture, 1.0)  # flat surfaces: one grey level of sensor noise as the floor
    change = float(np.sqrt(np.mean((after[sub] - before[sub]) ** 2)))
    ring_after = after[ring] if ring.any() else after[~sub]
    contrast = abs(float(after[sub].mean()) - float(ring_after.mean())) / max(float(ring_after.std()), 1.0)
    return change / texture, contrast


def texture_descriptor(image: "np.ndarray") -> "np.ndarray":
    """Seven whole-image statistics: mean, std, mean gradient, fine-detail energy, spectral radius, orientation (2)."""
    import numpy as np
    from scipy import ndimage

    from myriad.synthetic.realistic_photos import luminance

    grey = luminance(image)
    gy = ndimage.sobel(grey, axis=0)
    gx = ndimage.sobel(grey, axis=1)
    detail = grey - ndimage.gaussian_filter(grey, 1.0)
    size = grey.shape[0]
    window = np.hanning(size).astype(np.float32)
    power = np.abs(np.fft.fftshift(np.fft.fft2((grey - grey.mean()) * np.outer(window, window)))) ** 2
    fy = np.fft.fftshift(np.fft.fftfreq(size))
    radius = np.hypot(*np.meshgrid(fy, fy, indexing="ij"))
    spectral = float((power * radius).sum() / max(power.sum(), 1e-9))
    jxx, jyy, jxy = float((gx * gx).mean()), float((gy * gy).mean()), float((gx * gy).mean())
    norm = max(jxx + jyy, 1e-9)
    return np.array([
        grey.mean(), grey.std(), np.hypot(gx, gy).mean(), detail.std(), spectral,
        (jxx - jyy) / norm, 2 * jxy / norm,  # doubled-angle orientation vector, scaled by coherence
    ], dtype=np.float64)


def global_visibility(clean: "np.ndarray", defective: "np.ndarray", normal_spread: "np.ndarray") -> float:
    """How far a texture-wide change moves the image's statistics, in units of the normal images' spread.

    The largest ``|descriptor(defective) - descriptor(clean)| / spread`` over the seven
    statistics of :func:`texture_descriptor`, where ``spread`` is their standard deviation
    over the category's normal training images: 1 means "as different as two normal
    images typically are" on the most affected statistic.
    """
    import numpy as np

    delta = np.abs(texture_descriptor(defective) - texture_descriptor(clean))
    return float(np.max(delta / np.maximum(normal_spread, 1e-9)))
