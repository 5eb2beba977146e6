"""Defects an inspector flags at a glance, for the visible dev set (``myriad make-devset --preset visible``).

The realistic preset's defects are subtle by design (most sit in its ``hard`` visibility
bucket), so a method can improve without its numbers moving. These kinds are what a quality
engineer's "obviously bad" pile holds: small (0.1-3 % of the image) but every one at least
``medium`` by the realistic preset's own visibility measure
(:func:`~myriad.synthetic.realistic_defects.local_visibility` >= 0.5,
:func:`~myriad.synthetic.realistic_defects.global_visibility` >= 2; the dev set redraws a
defect until it is). They paint on the same photos, poses and sensor noise as the
realistic preset (:mod:`myriad.synthetic.realistic_photos`).

Kinds (sizes for a 256 px crop; they scale with the crop side):

======================  ============  =====  ======================================================================
kind                    family        split  what changes
======================  ============  =====  ======================================================================
``stain``               local         eval   soft irregular patch, 15-60 % brighter or darker, texture kept (tinted on colour)
``blob``                local         eval   smooth round bright or dark blob (Gaussian profile), 15-60 %, texture kept
``speckle_cluster``     local         eval   8-30 tiny dots (1-2.2 px) in a 6-16 px cluster, 25-60 % contrast
``scratch``             local         eval   1.2-2.8 px curved line, 40-140 px long, 20-50 % contrast
``hole``                local         eval   4.5-9 px dark hole, 40-80 % darker, texture filled in
``particle_opaque``     local         eval   4.5-10 px speck of ANOTHER photo, 75-100 % opaque, tone 15-40 % off
``density_strong``      texture-wide  eval   crop resampled 8-15 % coarser (magnified)
``orientation_strong``  texture-wide  eval   texture turned 6-8 degrees beyond its pose (oriented photos only)
``blur_strong``         texture-wide  eval   out of focus, Gaussian sigma 0.8-1.8 px
``noise_strong``        texture-wide  eval   extra sensor noise, sigma 6-14 grey levels
``blotch``              local         train  several overlapping soft lobes, 15-50 % brighter or darker
``colour_patch``        local         train  soft patch with a 10-30 % colour shift (brightness on grey photos)
``smear``               local         train  elongated soft streak, 20-60 px by 3-8 px, 15-45 % contrast
``chip``                local         train  bright irregular chip, 3-8 px, texture flattened, 30-70 % brighter
``contrast_strong``     texture-wide  train  whole-image contrast changed by 15-35 %
``warp_strong``         texture-wide  train  smooth elastic warp of 2-4 px
======================  ============  =====  ======================================================================

**Frozen.** Every range a painter draws from lives in :data:`VISIBLE_PARAMETERS`, and
``tests/test_visible_devset.py`` pins that table's digest: the benchmark's distributions
were fixed before any method was measured on it and must not be retuned to suit one.
The evaluation kinds and photos never reach LMM training; the training kinds (``split
= train``) are for Myriad-mini's training data, on training photos.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from myriad.errors import ConfigError
from myriad.synthetic.realistic_defects import (
    Alteration,
    RealisticKind,
    Scene,
    _blend,
    _blob,
    _centre,
    _curve,
    _floor,
    _local_stats,
    _near_curve,
    _repose,
    _smooth_2d,
    contrast_change,
    elastic_warp,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "VISIBLE_PARAMETERS",
    "VISIBLE_KINDS",
    "VISIBLE_EVAL_KINDS",
    "VISIBLE_TRAIN_KINDS",
    "VISIBLE_AREA_RANGE",
    "VISIBLE_MIN_VISIBILITY",
    "VISIBLE_NOT_ON",
    "get_visible_kind",
]

#: Area fraction every local visible defect must have.
VISIBLE_AREA_RANGE = (0.001, 0.03)
#: Least visibility (local, texture-wide): the lower edge of the realistic preset's ``medium`` bucket.
VISIBLE_MIN_VISIBILITY = (0.5, 2.0)

#: Photos a kind is not drawn on, and why (part of the frozen distributions).
VISIBLE_NOT_ON: dict[str, tuple[str, ...]] = {
    # a magnified crop of an object photo is a pose change: it stays below medium visibility (median 0.5)
    "density_strong": ("fundus",),
}

#: Every range the painters draw from, [low, high] (sizes in px of a 256 px crop). Frozen: see the module docstring.
VISIBLE_PARAMETERS: dict[str, dict[str, tuple[float, float]]] = {
    "stain": {"radius_px": (6.0, 22.0), "brightness": (0.15, 0.60), "tint": (-0.05, 0.05)},
    "blob": {"radius_px": (4.0, 16.0), "brightness": (0.15, 0.60)},
    "speckle_cluster": {"cluster_radius_px": (6.0, 16.0), "dots": (8, 30), "dot_radius_px": (1.0, 2.2), "contrast": (0.25, 0.60)},
    "scratch": {"length_px": (40.0, 140.0), "width_px": (1.2, 2.8), "contrast": (0.20, 0.50)},
    "hole": {"radius_px": (4.5, 9.0), "darker": (0.40, 0.80)},
    "particle_opaque": {"radius_px": (4.5, 10.0), "opacity": (0.75, 1.0), "tone": (0.15, 0.40)},
    "density_strong": {"scale_change": (0.08, 0.15)},
    "orientation_strong": {"extra_degrees": (6.0, 8.0)},
    "blur_strong": {"sigma_px": (0.8, 1.8)},
    "noise_strong": {"extra_sigma": (6.0, 14.0)},
    "blotch": {"radius_px": (5.0, 14.0), "lobes": (2, 5), "brightness": (0.15, 0.50)},
    "colour_patch": {"radius_px": (6.0, 20.0), "shift": (0.10, 0.30)},
    "smear": {"length_px": (20.0, 60.0), "width_px": (3.0, 8.0), "contrast": (0.15, 0.45)},
    "chip": {"radius_px": (3.0, 8.0), "brighter": (0.30, 0.70)},
    "contrast_strong": {"contrast": (0.15, 0.35)},
    "warp_strong": {"warp_px": (2.0, 4.0)},
}


def _draw(rng: "np.random.Generator", kind: str, name: str) -> float:
    low, high = VISIBLE_PARAMETERS[kind][name]
    return float(rng.uniform(low, high))


def _draw_int(rng: "np.random.Generator", kind: str, name: str) -> int:
    low, high = VISIBLE_PARAMETERS[kind][name]
    return int(rng.integers(int(low), int(high) + 1))


def _signed(rng: "np.random.Generator", value: float) -> float:
    return value if rng.random() < 0.5 else -value


def _scaled(material: "np.ndarray", alpha: "np.ndarray", factor: "np.ndarray | float") -> "np.ndarray":
    """The material multiplied by ``factor`` where ``alpha`` says (texture kept, tone moved)."""
    import numpy as np

    return _blend(material, material * np.asarray(factor, dtype=np.float32), alpha)


# --------------------------------------------------------------------------- evaluation kinds (local)


def stain(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """A soft irregular patch 15-60 % brighter or darker; the texture shows through (tinted on colour photos)."""
    import numpy as np

    k = scene.size / 256
    radius = _draw(rng, "stain", "radius_px") * k
    centre = _centre(rng, scene.size, radius + 4)
    shape = _blob(rng, scene.size, centre, radius, irregularity=0.5, soft=0.3 * radius)
    alpha = _floor(shape * (0.6 + 0.4 * _smooth_2d(rng, scene.size, max(1.0, radius / 3))))
    change = _signed(rng, _draw(rng, "stain", "brightness"))
    channels = scene.material.shape[2]
    tint = np.array([_draw(rng, "stain", "tint") for _ in range(channels)]) if scene.colour else np.zeros(channels)
    return Alteration(_scaled(scene.material, alpha, 1 + change + tint), alpha,
                      params={"radius_px": round(radius, 1), "brightness": round(change, 3)})


def blob(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """A smooth round blob (Gaussian profile) 15-60 % brighter or darker; the texture shows through."""
    import numpy as np

    k = scene.size / 256
    radius = _draw(rng, "blob", "radius_px") * k
    cy, cx = _centre(rng, scene.size, radius + 4)
    yy, xx = np.mgrid[0 : scene.size, 0 : scene.size].astype(np.float32)
    profile = np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / (0.6 * radius) ** 2)
    alpha = _floor(profile)
    change = _signed(rng, _draw(rng, "blob", "brightness"))
    return Alteration(_scaled(scene.material, alpha, 1 + change), alpha,
                      params={"radius_px": round(radius, 1), "brightness": round(change, 3)})


def speckle_cluster(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """A cluster of 8-30 tiny dots (1-2.2 px) 25-60 % darker or brighter than the surface."""
    import numpy as np

    k = scene.size / 256
    spread = _draw(rng, "speckle_cluster", "cluster_radius_px") * k
    cy, cx = _centre(rng, scene.size, spread + 4)
    yy, xx = np.mgrid[0 : scene.size, 0 : scene.size].astype(np.float32)
    alpha = np.zeros((scene.size, scene.size), np.float32)
    for _ in range(_draw_int(rng, "speckle_cluster", "dots")):
        dy, dx = rng.normal(0.0, spread / 2, 2)
        r = _draw(rng, "speckle_cluster", "dot_radius_px") * k
        d = np.hypot(yy - cy - dy, xx - cx - dx)
        alpha = np.maximum(alpha, np.clip(r + 0.5 - d, 0, 1))
    alpha = _floor(alpha)
    change = _signed(rng, _draw(rng, "speckle_cluster", "contrast"))
    return Alteration(_scaled(scene.material, alpha, 1 + change), alpha,
                      params={"cluster_radius_px": round(spread, 1), "contrast": round(change, 3)})


def scratch(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """A thin (1.2-2.8 px) curved line 40-140 px long, 20-50 % brighter or darker than the surface."""
    k = scene.size / 256
    points = _curve(rng, scene.size, _draw(rng, "scratch", "length_px") * k, 1 / 50)
    width = _draw(rng, "scratch", "width_px") * k
    dist, _ = _near_curve(points, scene.size, width / 2 + 1.0)
    alpha = _floor((width / 2 + 0.5 - dist).clip(0, 1))
    change = _signed(rng, _draw(rng, "scratch", "contrast"))
    return Alteration(_scaled(scene.material, alpha, 1 + change), alpha,
                      params={"width_px": round(width, 2), "contrast": round(change, 3)})


def hole(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """A dark hole of 4.5-9 px: texture filled in (smoothed) and 40-80 % darker, with a soft rim."""
    from scipy.ndimage import gaussian_filter

    k = scene.size / 256
    radius = _draw(rng, "hole", "radius_px") * k
    centre = _centre(rng, scene.size, radius + 4)
    alpha = _floor(_blob(rng, scene.size, centre, radius, irregularity=0.3, soft=1.5))
    depth = _draw(rng, "hole", "darker")
    fill = gaussian_filter(scene.material, sigma=(3, 3, 0), mode="reflect") * (1 - depth)
    return Alteration(_blend(scene.material, fill, alpha), alpha, params={"radius_px": round(radius, 2), "darker": round(depth, 3)})


def particle_opaque(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """A foreign speck of 4.5-10 px textured from another photo, 75-100 % opaque, its tone 15-40 % off."""
    import numpy as np

    k = scene.size / 256
    radius = _draw(rng, "particle_opaque", "radius_px") * k
    centre = _centre(rng, scene.size, radius + 4)
    opacity = _draw(rng, "particle_opaque", "opacity")
    alpha = _floor(opacity * _blob(rng, scene.size, centre, radius, irregularity=0.8, soft=0.8))
    donor_name, patch = scene.donor(rng, scene.size)
    mean, std = _local_stats(scene.material, centre, radius)
    spread = float(patch.mean(axis=2).std()) or 1.0
    tone = 1 + _signed(rng, _draw(rng, "particle_opaque", "tone"))
    target = (patch - patch.reshape(-1, patch.shape[2]).mean(axis=0)) / spread * std + mean * tone
    return Alteration(_blend(scene.material, target.astype(np.float32), alpha), alpha,
                      params={"radius_px": round(radius, 1), "donor": donor_name, "tone": round(tone, 3), "opacity": round(opacity, 2)})


# --------------------------------------------------------------------------- evaluation kinds (texture-wide)


def density_strong(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """The whole crop resampled 8-15 % coarser (magnified; the photo zones leave no room to go denser)."""
    change = -_draw(rng, "density_strong", "scale_change")
    return Alteration(_repose(scene, scale=1 + change), params={"scale": round(1 + change, 4)})


def orientation_strong(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """The whole texture turned 6-8 degrees beyond its pose (the photo zones allow 10 in all)."""
    turn = _draw(rng, "orientation_strong", "extra_degrees")
    angle = scene.pose.angle + (turn if scene.pose.angle >= 0 else -turn)
    return Alteration(_repose(scene, angle=angle), params={"extra_degrees": round(turn, 2)})


def blur_strong(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """Out of focus: Gaussian blur of 0.8-1.8 px over the whole image."""
    from scipy.ndimage import gaussian_filter

    sigma = _draw(rng, "blur_strong", "sigma_px")
    return Alteration(gaussian_filter(scene.material, sigma=(sigma, sigma, 0), mode="reflect"), params={"sigma_px": round(sigma, 3)})


def noise_strong(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """Much more sensor noise: an extra 6-14 grey levels standard deviation."""
    sigma = _draw(rng, "noise_strong", "extra_sigma")
    return Alteration(scene.material, extra_noise=sigma, params={"extra_sigma": round(sigma, 2)})


# --------------------------------------------------------------------------- training kinds (never in the visible preset)


def blotch(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """Several overlapping soft lobes, 15-50 % brighter or darker; the texture shows through."""
    import numpy as np

    k = scene.size / 256
    radius = _draw(rng, "blotch", "radius_px") * k
    cy, cx = _centre(rng, scene.size, 2 * radius + 4)
    shape = np.zeros((scene.size, scene.size), np.float32)
    for _ in range(_draw_int(rng, "blotch", "lobes")):
        offset = rng.uniform(-radius, radius, 2)
        lobe = _blob(rng, scene.size, (cy + offset[0], cx + offset[1]), radius * rng.uniform(0.5, 1.0), 0.3, 0.4 * radius)
        shape = np.maximum(shape, lobe)
    alpha = _floor(shape)
    change = _signed(rng, _draw(rng, "blotch", "brightness"))
    return Alteration(_scaled(scene.material, alpha, 1 + change), alpha, params={"radius_px": round(radius, 1), "brightness": round(change, 3)})


def colour_patch(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """A soft patch whose colour shifts 10-30 % (one channel up, another down; brightness on grey photos)."""
    import numpy as np

    k = scene.size / 256
    radius = _draw(rng, "colour_patch", "radius_px") * k
    centre = _centre(rng, scene.size, radius + 4)
    alpha = _floor(_blob(rng, scene.size, centre, radius, irregularity=0.3, soft=0.3 * radius))
    shift = _draw(rng, "colour_patch", "shift")
    channels = scene.material.shape[2]
    factor = np.ones(channels)
    if channels == 3:
        up, down = rng.choice(3, size=2, replace=False)
        factor[up] += shift
        factor[down] -= shift
    else:
        factor += _signed(rng, shift)
    return Alteration(_scaled(scene.material, alpha, factor), alpha, params={"radius_px": round(radius, 1), "shift": round(shift, 3)})


def smear(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """An elongated soft streak, 20-60 px by 3-8 px, 15-45 % brighter or darker."""
    k = scene.size / 256
    points = _curve(rng, scene.size, _draw(rng, "smear", "length_px") * k, 1 / 120)
    half = _draw(rng, "smear", "width_px") * k / 2
    dist, _ = _near_curve(points, scene.size, half + 1.0)
    alpha = _floor((1 - dist / (half + 1.0)).clip(0, 1) ** 0.7)
    change = _signed(rng, _draw(rng, "smear", "contrast"))
    return Alteration(_scaled(scene.material, alpha, 1 + change), alpha, params={"width_px": round(2 * half, 1), "contrast": round(change, 3)})


def chip(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """A bright irregular chip of 3-8 px: texture flattened and 30-70 % brighter."""
    from scipy.ndimage import gaussian_filter

    k = scene.size / 256
    radius = _draw(rng, "chip", "radius_px") * k
    centre = _centre(rng, scene.size, radius + 4)
    alpha = _floor(_blob(rng, scene.size, centre, radius, irregularity=1.0, soft=0.7))
    brighter = _draw(rng, "chip", "brighter")
    fill = gaussian_filter(scene.material, sigma=(2, 2, 0), mode="reflect") * (1 + brighter)
    return Alteration(_blend(scene.material, fill, alpha), alpha, params={"radius_px": round(radius, 1), "brighter": round(brighter, 3)})


def contrast_strong(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """Whole-image contrast changed by 15-35 %."""
    return contrast_change(scene, _signed(rng, _draw(rng, "contrast_strong", "contrast")))


def warp_strong(scene: Scene, rng: "np.random.Generator") -> Alteration:
    """A smooth elastic warp of 2-4 px over the whole image."""
    return elastic_warp(scene, rng, _draw(rng, "warp_strong", "warp_px"))


def _kinds() -> dict[str, RealisticKind]:
    entries = [
        (stain, "local", "eval", False),
        (blob, "local", "eval", False),
        (speckle_cluster, "local", "eval", False),
        (scratch, "local", "eval", False),
        (hole, "local", "eval", False),
        (particle_opaque, "local", "eval", False),
        (density_strong, "texture-wide", "eval", False),
        (orientation_strong, "texture-wide", "eval", True),
        (blur_strong, "texture-wide", "eval", False),
        (noise_strong, "texture-wide", "eval", False),
        (blotch, "local", "train", False),
        (colour_patch, "local", "train", False),
        (smear, "local", "train", False),
        (chip, "local", "train", False),
        (contrast_strong, "texture-wide", "train", False),
        (warp_strong, "texture-wide", "train", False),
    ]
    kinds = {
        f.__name__: RealisticKind(f.__name__, family, split, (f.__doc__ or "").strip(), f, needs_orientation=oriented)
        for f, family, split, oriented in entries
    }
    assert set(kinds) == set(VISIBLE_PARAMETERS), "every visible kind draws from VISIBLE_PARAMETERS"
    return kinds


VISIBLE_KINDS: dict[str, RealisticKind] = _kinds()
#: Kinds the visible dev set is made of: reserved for evaluation, never for training Myriad's LMM.
VISIBLE_EVAL_KINDS: tuple[str, ...] = tuple(k for k, v in VISIBLE_KINDS.items() if v.split == "eval")
#: Visible kinds that may be used to make LMM training data (disjoint from the evaluation kinds).
VISIBLE_TRAIN_KINDS: tuple[str, ...] = tuple(k for k, v in VISIBLE_KINDS.items() if v.split == "train")


def get_visible_kind(name: str) -> RealisticKind:
    """The visible defect kind ``name``; :class:`ConfigError` lists the available ones."""
    try:
        return VISIBLE_KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown visible defect kind {name!r}; available: {', '.join(VISIBLE_KINDS)}") from None
