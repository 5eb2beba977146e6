"""Texture sources: endless, seeded normal images of one material each.

Two origins:

* **photos** bundled with scikit-image (no download): ``brick``, ``grass`` and ``gravel``
  (grayscale, tinted with a fixed colour ramp) and ``tissue`` (the RGB
  ``immunohistochemistry`` slide). Each normal image is a random crop (scale jitter
  +-10 %, flips; quarter turns only for isotropic textures) resized to the wanted size, with
  a small brightness jitter: like MVTec's texture categories, normal images differ by
  position, not by kind.
* **procedural** textures drawn from noise: ``wood`` (rings and fibres), ``weave`` (plain
  weave with different warp and weft threads), ``dots`` (perforated metal, hexagonal
  lattice), ``marble`` (turbulent veins) and ``concrete`` (fractal noise with pores).
  Each image redraws the noise and jitters the parameters slightly.

``oriented`` marks textures with a dominant direction; rotation defects are only
meaningful (visible) on those. All images are RGB ``uint8`` ``size x size x 3``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Sequence

from myriad.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "TextureSource",
    "TEXTURES",
    "PHOTO_TEXTURES",
    "PROCEDURAL_TEXTURES",
    "get_texture",
    "sample_texture",
    "fractal_noise",
    "colour_ramp",
    "resize_rgb",
]



# --------------------------------------------------------------------------- helpers


def _rng(seed: object) -> "np.random.Generator":
    import numpy as np

    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)  # type: ignore[arg-type]


def fractal_noise(
    rng: "np.random.Generator",
    shape: tuple[int, int],
    sigma: float,
    octaves: int = 4,
    persistence: float = 0.5,
) -> "np.ndarray":
    """Sum of ``octaves`` Gaussian-filtered white noises (sigma halving each octave).

    Wide octaves are drawn on a coarser grid and upsampled bilinearly (same look, a
    fraction of the cost). Returns float32 with zero mean and unit std.
    """
    import numpy as np

    total = np.zeros(shape, dtype=np.float32)
    amplitude, s = 1.0, float(sigma)
    for _ in range(int(octaves)):
        total += amplitude * _smooth_noise(rng, shape, max(s, 0.5))
        amplitude *= persistence
        s /= 2.0
    total -= total.mean()
    return (total / (total.std() + 1e-12)).astype(np.float32)


def _smooth_noise(rng: "np.random.Generator", shape: tuple[int, int], sigma: float) -> "np.ndarray":
    """Gaussian-filtered white noise with unit std; computed at 1/factor resolution when wide."""
    import numpy as np
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    factor = max(1, int(sigma // 3))
    low_shape = (-(-shape[0] // factor) + 2, -(-shape[1] // factor) + 2)
    layer = gaussian_filter(rng.standard_normal(low_shape), sigma / factor, mode="wrap").astype(np.float32)
    if factor > 1:
        big = (low_shape[1] * factor, low_shape[0] * factor)
        layer = np.asarray(Image.fromarray(layer, mode="F").resize(big, Image.Resampling.BILINEAR))
        offset = factor  # skip the first (border) cell
        layer = layer[offset : offset + shape[0], offset : offset + shape[1]]
    else:
        layer = layer[: shape[0], : shape[1]]
    return layer / (layer.std() + 1e-12)


def _anisotropic_noise(rng: "np.random.Generator", shape: tuple[int, int], sigma_y: float, sigma_x: float) -> "np.ndarray":
    """White noise smeared along one axis (fibres, brushed metal); zero mean, unit std."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    layer = gaussian_filter(rng.standard_normal(shape), (sigma_y, sigma_x), mode="wrap")
    return ((layer - layer.mean()) / (layer.std() + 1e-12)).astype(np.float32)


def colour_ramp(values: "np.ndarray", stops: Sequence[tuple[float, tuple[int, int, int]]]) -> "np.ndarray":
    """Map ``values`` in [0, 1] to RGB uint8 through piecewise-linear colour ``stops``."""
    import numpy as np

    positions = [p for p, _ in stops]
    v = np.clip(values, 0.0, 1.0)
    channels = [np.interp(v, positions, [c[i] for _, c in stops]) for i in range(3)]
    return np.clip(np.stack(channels, axis=-1) + 0.5, 0, 255).astype(np.uint8)


def resize_rgb(image: "np.ndarray", height: int, width: int) -> "np.ndarray":
    """Resize an RGB uint8 image with Pillow (bilinear, antialiased when shrinking)."""
    import numpy as np
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def _unit_grid(size: int) -> tuple["np.ndarray", "np.ndarray"]:
    """Pixel-centre coordinates in units of the image side (0..1), as ``(y, x)``."""
    import numpy as np

    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(axis, axis, indexing="ij")


# --------------------------------------------------------------------------- photos


@lru_cache(maxsize=None)
def _photo(name: str) -> "np.ndarray":
    """A scikit-image sample photo as a read-only array (loaded once per process)."""
    from skimage import data

    image = getattr(data, name)()
    image.setflags(write=False)
    return image


#: Colour ramps (dark, light) applied to the grayscale photos.
_TINTS = {
    "brick": ((58, 26, 20), (238, 176, 140)),
    "grass": ((18, 44, 12), (178, 222, 112)),
    "gravel": ((42, 39, 35), (228, 222, 210)),
}


def _photo_texture(photo: str, tint: tuple | None, isotropic: bool, crop_fraction: float = 0.5) -> Callable:
    def generate(rng: "np.random.Generator", size: int) -> "np.ndarray":
        import numpy as np

        source = _photo(photo)
        height, width = source.shape[:2]
        side = int(round(min(height, width) * crop_fraction * rng.uniform(0.9, 1.1)))
        side = max(8, min(side, height, width))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crop = np.asarray(source[top : top + side, left : left + side])
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < 0.5:
            crop = crop[::-1]
        if isotropic:
            crop = np.rot90(crop, int(rng.integers(0, 4)))
        if crop.ndim == 2:
            dark, light = tint
            rgb = colour_ramp(crop.astype(np.float32) / 255.0, [(0.0, dark), (1.0, light)])
        else:
            rgb = np.ascontiguousarray(crop[..., :3])
        rgb = resize_rgb(np.ascontiguousarray(rgb), size, size)
        gain = rng.uniform(0.97, 1.03)
        return np.clip(rgb.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)

    return generate


# --------------------------------------------------------------------------- procedural


def _wood(rng: "np.random.Generator", size: int) -> "np.ndarray":
    import numpy as np

    y, x = _unit_grid(size)
    spacing = 0.05 * rng.uniform(0.92, 1.08)
    cx, cy = rng.uniform(-0.3, 1.3), -rng.uniform(1.2, 2.5)  # far above: near-horizontal rings
    warp = 0.015 * fractal_noise(rng, (size, size), size / 5, octaves=3)
    radius = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) + warp
    phase = radius / spacing + rng.uniform(0, 1)
    rings = ((np.sin(2 * np.pi * phase) + 1) / 2) ** 2.5
    fibres = _anisotropic_noise(rng, (size, size), 0.6 * size / 256, 14 * size / 256)
    blotches = fractal_noise(rng, (size, size), size / 4, octaves=2)
    value = 0.30 + 0.42 * rings + 0.06 * fibres + 0.05 * blotches
    return colour_ramp(value, [(0.0, (82, 44, 18)), (0.55, (170, 112, 58)), (1.0, (226, 178, 118))])


def _weave(rng: "np.random.Generator", size: int) -> "np.ndarray":
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    warp_period = size / 16.0 * rng.uniform(0.97, 1.03)  # vertical threads
    weft_period = warp_period * 0.72  # horizontal threads, finer
    wobble = 0.08 * warp_period * fractal_noise(rng, (size, size), size / 6, octaves=2)
    u = (xx + rng.uniform(0, warp_period) + wobble) / warp_period
    v = (yy + rng.uniform(0, weft_period) - wobble) / weft_period
    i, j = np.floor(u), np.floor(v)
    fu, fv = u - i, v - j
    warp_on_top = ((i + j) % 2) == 0
    # Thread profile across its width (rounded), darker where it dives under the other thread.
    warp_shade = np.sin(np.pi * fu) ** 0.7 * (0.75 + 0.25 * np.sin(np.pi * fv))
    weft_shade = np.sin(np.pi * fv) ** 0.7 * (0.75 + 0.25 * np.sin(np.pi * fu))
    shade = np.where(warp_on_top, warp_shade, weft_shade)
    fibre = 0.05 * _anisotropic_noise(rng, (size, size), 0.5, 0.5)
    warp_colour = np.array([52, 78, 138], dtype=np.float32)
    weft_colour = np.array([186, 190, 204], dtype=np.float32)
    colour = np.where(warp_on_top[..., None], warp_colour, weft_colour)
    rgb = colour * (0.35 + 0.7 * shade[..., None] + fibre[..., None])
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _dots(rng: "np.random.Generator", size: int) -> "np.ndarray":
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    spacing = size / 11.0 * rng.uniform(0.98, 1.02)
    row_step = spacing * np.sqrt(3) / 2
    oy, ox = rng.uniform(0, row_step), rng.uniform(0, spacing)
    best = np.full((size, size), np.inf, dtype=np.float32)
    row = np.floor((yy + oy) / row_step)
    for d in (-1.0, 0.0, 1.0):
        r = row + d
        cy = r * row_step - oy
        shift = (r % 2) * spacing / 2
        cx = np.round((xx + ox - shift) / spacing) * spacing - ox + shift
        best = np.minimum(best, np.hypot(yy - cy, xx - cx))
    radius = 0.27 * spacing
    brushed = _anisotropic_noise(rng, (size, size), 0.5, 18 * size / 256)
    metal = 0.62 + 0.05 * brushed + 0.04 * fractal_noise(rng, (size, size), size / 3, octaves=1)
    rim = np.exp(-(((best - radius * 1.12) / (0.09 * spacing)) ** 2))
    hole = np.clip((radius - best) / 1.2 + 0.5, 0, 1)
    value = (metal + 0.16 * rim) * (1 - hole) + 0.08 * hole
    return colour_ramp(value, [(0.0, (20, 22, 26)), (0.6, (150, 154, 160)), (1.0, (226, 228, 232))])


def _marble(rng: "np.random.Generator", size: int) -> "np.ndarray":
    import numpy as np

    y, x = _unit_grid(size)
    angle = np.deg2rad(30 + rng.uniform(-5, 5))
    period = 0.28 * rng.uniform(0.92, 1.08)
    turbulence = fractal_noise(rng, (size, size), size / 5, octaves=5, persistence=0.55)
    wave = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + 1.6 * turbulence + rng.uniform(0, 2 * np.pi))
    veins = np.abs(wave) ** 0.35
    cloud = fractal_noise(rng, (size, size), size / 8, octaves=3)
    value = 0.25 + 0.7 * veins + 0.04 * cloud
    return colour_ramp(value, [(0.0, (70, 84, 78)), (0.55, (176, 182, 176)), (1.0, (240, 237, 230))])


def _concrete(rng: "np.random.Generator", size: int) -> "np.ndarray":
    import numpy as np
    from scipy.ndimage import gaussian_filter

    base = fractal_noise(rng, (size, size), size / 10, octaves=5, persistence=0.6)
    pores_field = gaussian_filter(rng.standard_normal((size, size)), 1.2 * size / 256, mode="wrap")
    pores = pores_field > np.quantile(pores_field, 0.985)
    value = 0.55 + 0.09 * base - 0.35 * gaussian_filter(pores.astype(np.float32), 0.7)
    return colour_ramp(value, [(0.0, (40, 40, 42)), (0.55, (140, 138, 132)), (1.0, (214, 210, 202))])


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class TextureSource:
    """One material: a seeded generator of normal images."""

    name: str
    origin: str  # "photo" or "procedural"
    oriented: bool
    description: str
    generate: Callable[["np.random.Generator", int], "np.ndarray"]
    #: the ``skimage.data`` photo a photo texture is cut from (None: procedural)
    photo: str | None = None

    def sample(self, rng: object = None, size: int = 256) -> "np.ndarray":
        """One normal image (RGB uint8 ``size x size x 3``) from ``rng`` (a Generator or a seed)."""
        if int(size) < 16:
            raise ConfigError(f"texture size must be at least 16 pixels, got {size}")
        return self.generate(_rng(rng), int(size))

    def as_dict(self) -> dict:
        """JSON form (for manifests)."""
        return {"name": self.name, "origin": self.origin, "oriented": self.oriented, "description": self.description}


def _registry() -> dict[str, TextureSource]:
    photos = [
        TextureSource("brick", "photo", True, "scikit-image 'brick' photo, tinted red", _photo_texture("brick", _TINTS["brick"], False), photo="brick"),
        TextureSource("grass", "photo", False, "scikit-image 'grass' photo, tinted green", _photo_texture("grass", _TINTS["grass"], True), photo="grass"),
        TextureSource("gravel", "photo", False, "scikit-image 'gravel' photo, tinted warm grey", _photo_texture("gravel", _TINTS["gravel"], True), photo="gravel"),
        TextureSource("tissue", "photo", False, "scikit-image 'immunohistochemistry' slide (RGB)", _photo_texture("immunohistochemistry", None, True), photo="immunohistochemistry"),
    ]
    procedural = [
        TextureSource("wood", "procedural", True, "growth rings with fibres, near-horizontal grain", _wood),
        TextureSource("weave", "procedural", True, "plain weave: blue vertical warp, light finer horizontal weft", _weave),
        TextureSource("dots", "procedural", True, "perforated brushed metal, hexagonal hole lattice", _dots),
        TextureSource("marble", "procedural", True, "marble with turbulent diagonal veins", _marble),
        TextureSource("concrete", "procedural", False, "fractal-noise concrete with small pores", _concrete),
    ]
    return {t.name: t for t in photos + procedural}


#: Every texture source by name.
TEXTURES: dict[str, TextureSource] = _registry()
PHOTO_TEXTURES = tuple(name for name, t in TEXTURES.items() if t.origin == "photo")
PROCEDURAL_TEXTURES = tuple(name for name, t in TEXTURES.items() if t.origin == "procedural")


def get_texture(name: str) -> TextureSource:
    """The texture source ``name``; the error lists the available ones."""
    try:
        return TEXTURES[name]
    except KeyError:
        raise ConfigError(f"unknown texture {name!r}; available: {', '.join(TEXTURES)}") from None


def sample_texture(name: str, rng: object = None, size: int = 256) -> "np.ndarray":
    """One normal image of texture ``name`` (see :meth:`TextureSource.sample`)."""
    return get_texture(name).sample(rng, size)
