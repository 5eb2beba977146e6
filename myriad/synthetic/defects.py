"""Synthetic defect painters: each turns a normal image into ``(defective image, mask)``.

Every painter takes an RGB ``uint8`` ``H x W x 3`` image and a numpy ``Generator`` (plus
an optional ``donor`` image for the cut-paste kinds) and returns the new image and a
``bool`` ``H x W`` mask of the changed area. Sizes scale with the image (the numbers
below are for 256 x 256). :func:`paint_defect` is the public entry: it checks the change
is visible (mean absolute change inside the mask) and retries with new draws otherwise.

Kinds are grouped in **families**; :data:`EVAL_DEFECTS` and :data:`TRAIN_DEFECTS` are
disjoint sets of kinds covering every family, so a model trained on synthetic
anomalies can be evaluated on kinds it never saw:

=====================  =========================  ===========================
family                 evaluation kind            training kind
=====================  =========================  ===========================
line                   ``scratch``                ``crack``
blob                   ``stain``                  ``spot``
foreign material       ``cut_paste``              ``cut_paste_self``
local texture change   ``local_blur``,            ``local_sharpen``,
                       ``local_rotate``           ``local_rescale``
whole texture          ``global_scale``,          ``global_orientation``,
                       ``global_contrast``        ``global_colour``
=====================  =========================  ===========================

Whole-texture kinds change the entire image (mask = whole image): the texture is
coarser/denser, turned, or has another contrast or colour. Each patch still looks
plausible, so patch-level nearest-neighbour experts tend to miss them. Rotation kinds
(``local_rotate``, ``global_orientation``) need an oriented texture to be visible.

Over 400 lines on purpose: a catalogue of defect painters, one short function each, registered in one table; a kind is read in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from myriad.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "DefectKind",
    "DEFECTS",
    "EVAL_DEFECTS",
    "TRAIN_DEFECTS",
    "FAMILIES",
    "get_defect",
    "applicable_defects",
    "paint_defect",
    "visibility",
]

Painted = tuple["np.ndarray", "np.ndarray"]


# --------------------------------------------------------------------------- geometry helpers


def _scale(image: "np.ndarray") -> float:
    return min(image.shape[:2]) / 256.0


def _centre(rng: "np.random.Generator", shape: tuple[int, ...], margin: float) -> tuple[float, float]:
    """A random point at least ``margin`` pixels from the border (or the centre if too small)."""
    h, w = shape[:2]
    my, mx = min(margin, h / 2), min(margin, w / 2)
    return float(rng.uniform(my, h - my)), float(rng.uniform(mx, w - mx))


def _blob_alpha(
    rng: "np.random.Generator",
    shape: tuple[int, ...],
    centre: tuple[float, float],
    radius: float,
    irregularity: float = 0.3,
    softness: float = 1.0,
    max_aspect: float = 1.6,
) -> "np.ndarray":
    """Soft alpha in [0, 1] of an irregular, elongated blob (radius wobbling with angle)."""
    import numpy as np

    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    phi = rng.uniform(0, np.pi)
    aspect = np.sqrt(rng.uniform(1.0, max_aspect))
    u = (dx * np.cos(phi) + dy * np.sin(phi)) / aspect
    v = (-dx * np.sin(phi) + dy * np.cos(phi)) * aspect
    dist = np.hypot(u, v)
    theta = np.arctan2(v, u)
    wobble = np.zeros_like(theta)
    for k in range(2, 6):
        wobble += rng.uniform(-1, 1) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    edge = radius * (1.0 + irregularity * wobble)
    return np.clip((edge - dist) / max(softness, 1e-3) + 0.5, 0.0, 1.0).astype(np.float32)


def _curve(
    rng: "np.random.Generator",
    centre: tuple[float, float],
    length: float,
    bend: float,
    jitter: float,
    smooth: bool,
    step: float = 0.5,
) -> "np.ndarray":
    """Points (N x 2, y/x) of a random curve of ``length`` pixels centred near ``centre``."""
    import numpy as np
    from scipy.ndimage import gaussian_filter1d

    n = max(int(length / step), 4)
    turns = rng.normal(0.0, jitter, n)
    if smooth:
        turns = gaussian_filter1d(turns, 12)
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(turns) + np.linspace(0, bend, n)
    points = np.cumsum(np.stack([np.sin(heading), np.cos(heading)], axis=1) * step, axis=0)
    points -= points.mean(axis=0)
    return points + np.asarray(centre)


def _line_distance(points: "np.ndarray", shape: tuple[int, ...]) -> "np.ndarray":
    """Distance (pixels) of every pixel to the nearest curve point inside the image."""
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    h, w = shape[:2]
    marks = np.zeros((h, w), dtype=bool)
    idx = np.round(points).astype(int)
    inside = (idx[:, 0] >= 0) & (idx[:, 0] < h) & (idx[:, 1] >= 0) & (idx[:, 1] < w)
    idx = idx[inside]
    if idx.size == 0:
        cy, cx = h // 2, w // 2
        idx = np.array([[cy, cx]])
    marks[idx[:, 0], idx[:, 1]] = True
    return distance_transform_edt(~marks).astype(np.float32)


def _warp(image: "np.ndarray", centre_out: tuple[float, float], centre_in: tuple[float, float], angle: float, scale: float) -> "np.ndarray":
    """The image seen through a similarity: output pixel p shows input ``centre_in + R(-angle)(p - centre_out) / scale``."""
    import numpy as np
    from scipy.ndimage import map_coordinates

    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - centre_out[0], xx - centre_out[1]
    c, s = np.cos(angle), np.sin(angle)
    src_y = centre_in[0] + (c * dy - s * dx) / scale
    src_x = centre_in[1] + (s * dy + c * dx) / scale
    out = np.empty(image.shape, dtype=np.float32)
    for ch in range(image.shape[2]):
        out[..., ch] = map_coordinates(image[..., ch].astype(np.float32), [src_y, src_x], order=1, mode="mirror")
    return out


def _blend(image: "np.ndarray", target: "np.ndarray", alpha: "np.ndarray") -> "np.ndarray":
    import numpy as np

    a = alpha[..., None]
    out = image.astype(np.float32) * (1.0 - a) + np.asarray(target, dtype=np.float32) * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _as_float(image: "np.ndarray") -> "np.ndarray":
    import numpy as np

    return image.astype(np.float32)


def _whole(image: "np.ndarray") -> "np.ndarray":
    import numpy as np

    return np.ones(image.shape[:2], dtype=bool)


# --------------------------------------------------------------------------- painters: lines


def scratch(image: "np.ndarray", rng: "np.random.Generator", donor: "np.ndarray | None" = None) -> Painted:
    """A thin smooth curved line, brighter (scraped) or darker (groove) than the surface."""
    import numpy as np

    s = _scale(image)
    size = min(image.shape[:2])
    centre = _centre(rng, image.shape, 0.2 * size)
    points = _curve(rng, centre, rng.uniform(0.25, 0.6) * size, bend=rng.uniform(-1.5, 1.5), jitter=0.02, smooth=True)
    dist = _line_distance(points, image.shape)
    half = rng.uniform(0.6, 1.5) * s
    alpha = np.clip(half + 0.5 - dist, 0.0, 1.0) * rng.uniform(0.8, 1.0)
    base = _as_float(image)
    target = base + rng.uniform(80, 130) if rng.random() < 0.6 else base * rng.uniform(0.25, 0.45)
    return _blend(image, target, alpha), dist <= half + 1.0


def crack(image: "np.ndarray", rng: "np.random.Generator", donor: "np.ndarray | None" = None) -> Painted:
    """A dark jagged line with one to three branches."""
    import numpy as np

    s = _scale(image)
    size = min(image.shape[:2])
    centre = _centre(rng, image.shape, 0.25 * size)
    length = rng.uniform(0.3, 0.6) * size
    main = _curve(rng, centre, length, bend=rng.uniform(-1, 1), jitter=0.18, smooth=False)
    parts = [main]
    for _ in range(int(rng.integers(1, 4))):
        start = main[int(rng.integers(len(main) // 5, 4 * len(main) // 5))]
        branch = _curve(rng, (0.0, 0.0), rng.uniform(0.15, 0.4) * length, bend=rng.uniform(-1, 1), jitter=0.18, smooth=False)
        parts.append(branch - branch[0] + start)
    dist = _line_distance(np.concatenate(parts), image.shape)
    half = rng.uniform(0.5, 1.1) * s
    alpha = np.clip(half + 0.5 - dist, 0.0, 1.0)
    target = _as_float(image) * rng.uniform(0.12, 0.3)
    return _blend(image, target, alpha), dist <= half + 1.0


# --------------------------------------------------------------------------- painters: blobs


_SPOT_COLOURS = ((150, 70, 30), (40, 36, 30), (200, 190, 60), (120, 30, 25), (235, 235, 225))


def spot(image: "np.ndarray", rng: "np.random.Generator", donor: "np.ndarray | None" = None) -> Painted:
    """One to three small opaque spots (dirt, paint, rust, burns)."""
    import numpy as np

    s = _scale(image)
    size = min(image.shape[:2])
    alpha = np.zeros(image.shape[:2], dtype=np.float32)
    colour = np.array(_SPOT_COLOURS[int(rng.integers(len(_SPOT_COLOURS)))], dtype=np.float32)
    colour = np.clip(colour * rng.uniform(0.85, 1.15, 3), 0, 255)
    for _ in range(int(rng.integers(1, 4))):
        radius = rng.uniform(0.025, 0.06) * size
        centre = _centre(rng, image.shape, radius * 1.6 + 2)
        alpha = np.maximum(alpha, _blob_alpha(rng, image.shape, centre, radius, 0.25, softness=1.2 * s))
    strength = rng.uniform(0.8, 1.0)
    texture = _as_float(image) * 0.15  # keep a trace of the surface under the spot
    target = colour * 0.85 + texture
    return _blend(image, target, alpha * strength), alpha > 0.5


_STAIN_TINTS = ((0.78, 0.6, 0.4), (0.55, 0.55, 0.5), (0.8, 0.86, 0.95), (1.25, 1.1, 0.8), (0.7, 0.8, 0.6))


def stain(image: "np.ndarray", rng: "np.random.Generator", donor: "np.ndarray | None" = None) -> Painted:
    """A large, soft, irregular discoloration with a darker rim (liquid stain)."""
    import numpy as np

    s = _scale(image)
    size = min(image.shape[:2])
    radius = rng.uniform(0.09, 0.18) * size
    centre = _centre(rng, image.shape, radius * 1.3)
    alpha = _blob_alpha(rng, image.shape, centre, radius, 0.4, softness=3.0 * s, max_aspect=2.0)
    tint = np.array(_STAIN_TINTS[int(rng.integers(len(_STAIN_TINTS)))], dtype=np.float32)
    rim = np.clip(1.0 - np.abs(alpha - 0.55) / 0.35, 0.0, 1.0)
    base = _as_float(image)
    target = base * tint * (1.0 - 0.25 * rim[..., None])
    strength = rng.uniform(0.6, 0.9)
    return _blend(image, target, alpha * strength), alpha > 0.5


# --------------------------------------------------------------------------- painters: foreign material


def _donor_or_noise(rng: "np.random.Generator", image: "np.ndarray", donor: "np.ndarray | None") -> "np.ndarray":
    import numpy as np

    from myriad.synthetic.textures import colour_ramp, fractal_noise, resize_rgb

    h, w = image.shape[:2]
    if donor is not None:
        donor = np.asarray(donor)
        return resize_rgb(np.ascontiguousarray(donor[..., :3]), h, w) if donor.shape[:2] != (h, w) else donor[..., :3]
    noise = fractal_noise(rng, (h, w), min(h, w) / 16, octaves=4)
    dark, light = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return colour_ramp(0.5 + 0.2 * noise, [(0.0, tuple(dark)), (1.0, tuple(light))])


def _region_alpha(rng: "np.random.Generator", image: "np.ndarray", low: float, high: float) -> tuple["np.ndarray", tuple[float, float]]:
    """A blob or a rotated rectangle with crisp edges; returns (alpha, centre)."""
    import numpy as np

    s = _scale(image)
    size = min(image.shape[:2])
    radius = rng.uniform(low, high) * size
    centre = _centre(rng, image.shape, radius * 1.3)
    if rng.random() < 0.5:
        return _blob_alpha(rng, image.shape, centre, radius, 0.25, softness=0.8 * s), centre
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    ry, rx = radius * rng.uniform(0.6, 1.0), radius * rng.uniform(0.8, 1.3)
    u = (xx - centre[1]) * np.cos(angle) + (yy - centre[0]) * np.sin(angle)
    v = -(xx - centre[1]) * np.sin(angle) + (yy - centre[0]) * np.cos(angle)
    inside = np.minimum(rx - np.abs(u), ry - np.abs(v))
    return np.clip(inside / (0.8 * s) + 0.5, 0.0, 1.0).astype(np.float32), centre


def cut_paste(image: "np.ndarray", rng: "np.random.Generator", donor: "np.ndarray | None" = None) -> Painted:
    """A patch of another material (the donor texture, else coloured noise) pasted in."""
    import numpy as np

    alpha, _ = _region_alpha(rng, image, 0.07, 0.15)
    source = _donor_or_noise(rng, image, donor)
    h, w = image.shape[:2]
    shifted = np.roll(source, (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1))
    return _blend(image, shifted, alpha), alpha > 0.5


def cut_paste_self(image: "np.ndarray", rng: "np.random.Generator", donor: "np.ndarray | None" = None) -> Painted:
    """A patch of the same image moved, turned and re-lit (CutPaste-style, subtle)."""
    import numpy as np

    alpha, centre = _region_alpha(rng, image, 0.07, 0.15)
    source_centre = _centre(rng, image.shape, 0.15 * min(image.shape[:2]))
    moved = _warp(image, centre, source_centre, rng.uniform(np.pi / 9, 2 * np.pi - np.pi / 9), rng.uniform(0.85, 1.2))
    moved *= rng.uniform(0.8, 1.2) * rng.uniform(0.95, 1.05, 3)
    return _blend(image, moved, alpha), alpha > 0.5


# --------------------------------------------------------------------------- painters: local texture changes


def _local_region(rng: "np.random.Generator", image: "np.ndarray", low: float = 0.08, high: float = 0.17, soft: float = 1.5) -> tuple["np.ndarray", tuple[float, float]]:
    size = min(image.shape[:2])
    radius = rng.uniform(low, high) * size
    centre = _centre(rng, image.shape, radius * 1.3)
    return _blob_alpha(rng, image.shape, centre, radius, 0.25, softness=soft * _scale(image)), centre


def local_blur(image: "np.ndarray", rng: "np.random.Generator", donor: "np.ndarray | None" = None) -> Painted:
    """A region out of focus or smeared (Gaussian blur)."""
    from scipy.ndimage import gaussian_filter

    alpha, _ = _local_region(rng, image, soft=2.5)
    sigma = rng.uniform(2.5, 5.0) * _scale(image)
    blurred = gaussian_filter(_as_float(image), (sigma, sigma, 0), mode="mirror")
    return _blend(image, blurred, alpha), alpha > 0.5


def local_sharpen(image: "np.ndarray", rng: "np.random.Generator", donor: "np.ndarray | None" = None) -> Painted:
    """A region with exaggerated fine detail (strong unsharp mask)."""
    from scipy.ndimage import gaussian_filter

    alpha, _ = _local_region(rng, image, soft=2.5)
    base = _as_float(image)
    detail = base - gaussian_filter(base, (1.5 * _scale(image), 1.5 * _scale(image), 0), mode="mirror")
    sharpened = base + rng.uniform(2.5, 4.5) * detail
    return _blend(image, sharpened, alpha), alpha > 0.5


def local_rotate(image: "np.ndarray", rng: "np.random.Generator", donor: "np.ndarray | None" = None) -> Painted:
    """A region whose texture is turned by 35-90 degrees (needs an oriented texture)."""
    import numpy as np

    alpha, centre = _local_region(rng, image, 0.1, 0.18, soft=1.0)
    angle = np.deg2rad(rng.uniform(35, 90)) * rng.choice([-1.0, 1.0])
    return _blend(image, _warp(image, centre, centre, angle, 1.0), alpha), alpha > 0.5


def local_rescale(image: "np.ndarray", rng: "np.random.Generator", donor: "np.ndarray | None" = None) -> Painted:
    """A region whose texture is magnified (x1.8-2.6) or shrunk (x0.4-0.55)."""
    alpha, centre = _local_region(rng, image, 0.1, 0.18, soft=1.0)
    factor = rng.uniform(1.8, 2.6) if rng.random() < 0.5 else rng.uniform(0.4, 0.55)
    return _blend(image, _warp(image, centre, centre, 0.0, factor), alpha), alpha > 0.5


# --------------------------------------------------------------------------- painters: whole texture


def global_scale(image: "np.ndarray", rng: "np.random.Generator", donor: "np.ndarray | None" = None) -> Painted:
    """The whole texture magnified x1.6-2.2: coarser, less dense structure everywhere."""
    h, w = image.shape[:2]
    factor = rng.uniform(1.6, 2.2)
    margin = min(h, w) / (2 * factor)
    centre = _centre(rng, image.shape, margin)
    return _blend(image, _warp(image, (h / 2 - 0.5, w / 2 - 0.5), centre, 0.0, factor), _ones(image)), _whole(image)


def global_orientation(image: "np.ndarray", rng: "np.random.Generator", donor: "np.ndarray | None" = None) -> Painted:
    """The whole texture turned by a quarter turn (needs an oriented texture)."""
    import numpy as np

    from myriad.synthetic.textures import resize_rgb

    turned = np.ascontiguousarray(np.rot90(image, 1 if rng.random() < 0.5 else 3))
    if turned.shape != image.shape:
        turned = resize_rgb(turned, image.shape[0], image.shape[1])
    return turned, _whole(image)


def global_contrast(image: "np.ndarray", rng: "np.random.Generator", donor: "np.ndarray | None" = None) -> Painted:
    """The whole texture with much lower (x0.35-0.55) or higher (x1.8-2.4) contrast."""
    import numpy as np

    base = _as_float(image)
    mean = base.mean(axis=(0, 1), keepdims=True)
    factor = rng.uniform(0.35, 0.55) if rng.random() < 0.5 else rng.uniform(1.8, 2.4)
    return np.clip(mean + (base - mean) * factor + 0.5, 0, 255).astype(np.uint8), _whole(image)


def global_colour(image: "np.ndarray", rng: "np.random.Generator", donor: "np.ndarray | None" = None) -> Painted:
    """The whole texture with a colour cast (channel gains off by 20-35 %)."""
    import numpy as np

    direction = rng.normal(size=3)
    direction -= direction.mean()  # keep overall brightness
    direction /= np.linalg.norm(direction) + 1e-12
    gains = 1.0 + rng.uniform(0.2, 0.35) * direction / np.abs(direction).max()
    return np.clip(_as_float(image) * gains + 0.5, 0, 255).astype(np.uint8), _whole(image)


def _ones(image: "np.ndarray") -> "np.ndarray":
    import numpy as np

    return np.ones(image.shape[:2], dtype=np.float32)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DefectKind:
    """A named defect painter and what it needs."""

    name: str
    family: str
    paint: Callable[..., Painted]
    description: str
    whole_image: bool = False
    needs_orientation: bool = False
    uses_donor: bool = False
    #: minimum mean absolute change (0-255, averaged over RGB) inside the mask
    min_visibility: float = 12.0

    def as_dict(self) -> dict:
        """JSON form (for manifests)."""
        return {
            "name": self.name,
            "family": self.family,
            "description": self.description,
            "whole_image": self.whole_image,
            "needs_orientation": self.needs_orientation,
        }


def _kind(paint: Callable[..., Painted], family: str, **kw: object) -> DefectKind:
    doc = (paint.__doc__ or "").strip().splitlines()[0]
    return DefectKind(paint.__name__, family, paint, doc, **kw)  # type: ignore[arg-type]


#: Families, in report order.
FAMILIES = ("line", "blob", "foreign", "local_texture", "global")

#: Every defect kind by name.
DEFECTS: dict[str, DefectKind] = {
    k.name: k
    for k in (
        _kind(scratch, "line"),
        _kind(crack, "line"),
        _kind(spot, "blob", min_visibility=20.0),
        _kind(stain, "blob"),
        _kind(cut_paste, "foreign", uses_donor=True),
        _kind(cut_paste_self, "foreign"),
        _kind(local_blur, "local_texture"),
        _kind(local_sharpen, "local_texture"),
        _kind(local_rotate, "local_texture", needs_orientation=True),
        _kind(local_rescale, "local_texture"),
        _kind(global_scale, "global", whole_image=True),
        _kind(global_orientation, "global", whole_image=True, needs_orientation=True),
        _kind(global_contrast, "global", whole_image=True),
        _kind(global_colour, "global", whole_image=True),
    )
}

#: Kinds for evaluation sets (``myriad make-devset``).
EVAL_DEFECTS = ("scratch", "stain", "cut_paste", "local_blur", "local_rotate", "global_scale", "global_contrast")
#: Kinds for training generators, disjoint from :data:`EVAL_DEFECTS`, same families.
TRAIN_DEFECTS = ("crack", "spot", "cut_paste_self", "local_sharpen", "local_rescale", "global_orientation", "global_colour")

assert not set(EVAL_DEFECTS) & set(TRAIN_DEFECTS)
assert set(EVAL_DEFECTS) | set(TRAIN_DEFECTS) == set(DEFECTS)


def get_defect(name: str) -> DefectKind:
    """The defect kind ``name``; the error lists the available ones."""
    try:
        return DEFECTS[name]
    except KeyError:
        raise ConfigError(f"unknown defect kind {name!r}; available: {', '.join(DEFECTS)}") from None


def applicable_defects(kinds: Sequence[str], oriented: bool) -> list[str]:
    """``kinds`` minus those that need an oriented texture when ``oriented`` is false."""
    return [k for k in kinds if oriented or not get_defect(k).needs_orientation]


def visibility(before: "np.ndarray", after: "np.ndarray", mask: "np.ndarray") -> float:
    """Mean absolute change (0-255, RGB averaged) inside ``mask``; 0 for an empty mask."""
    import numpy as np

    if not mask.any():
        return 0.0
    diff = np.abs(after.astype(np.float32) - before.astype(np.float32)).mean(axis=2)
    return float(diff[mask].mean())


def paint_defect(
    kind: str,
    image: "np.ndarray",
    rng: object = None,
    donor: "np.ndarray | None" = None,
    attempts: int = 6,
) -> Painted:
    """Paint defect ``kind`` on ``image``: returns ``(image uint8 H x W x 3, mask bool H x W)``.

    ``rng`` is a numpy Generator or a seed. A result whose change inside the mask is
    below the kind's ``min_visibility`` (e.g. a blur on an already smooth area) is redrawn,
    up to ``attempts`` times; the most visible draw is kept. The mask is never empty.
    """
    import numpy as np

    from myriad.images import as_rgb

    spec = get_defect(kind)
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)  # type: ignore[arg-type]
    base = as_rgb(image, source="image")
    best: tuple[float, Painted] | None = None
    for _ in range(max(1, int(attempts))):
        out, mask = spec.paint(base, generator, donor)
        mask = np.ascontiguousarray(mask, dtype=bool)
        if not mask.any():
            continue
        seen = visibility(base, out, mask)
        if best is None or seen > best[0]:
            best = (seen, (out, mask))
        if seen >= spec.min_visibility:
            break
    if best is None:  # pragma: no cover - painters always mark pixels inside the image
        raise RuntimeError(f"defect painter {kind!r} produced only empty masks")
    return best[1]
