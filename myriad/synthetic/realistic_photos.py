"""Real photographs as normal material for the realistic dev set: sources, zones, poses, rendering.

Every category is one real photo shipped inside an installed package (scikit-image's
bundled samples; nothing is downloaded). A normal image is a ``size`` x ``size`` crop of
the photo at its **native resolution**: a pose (centre, rotation of about +-2 degrees,
scale 1) maps output pixels onto the photo's own pixel grid and the photo is sampled there
with cubic splines, so nothing is upscaled. Lighting (gain, gamma, a gradient of a few
percent) and mild sensor noise are applied afterwards (:func:`finish`).

Train and test crops come from different zones of each photo (:class:`Zones`): test
crops are centred in a box at the bottom-right of the usable centre range, training crops
at least ``TRAIN_GAP`` pixels (on large photos up to a crop side) away from that box along one axis. On a 512 px photo a 256 px
crop cannot avoid overlapping every other crop, so some source pixels are shared; the
dev set measures and records the overlap (:func:`window_overlap`) instead of hiding it.
Test images are never pixel copies of training images: their centres, rotations, lighting
and noise differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from myriad.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "PhotoSource",
    "PHOTOS",
    "EVAL_PHOTOS",
    "TRAIN_PHOTOS",
    "get_photo_source",
    "Pose",
    "Zones",
    "zones_for",
    "draw_pose",
    "render_material",
    "finish",
    "luminance",
    "window_overlap",
    "MAX_SCALE",
    "MAX_ANGLE",
    "TRAIN_GAP",
]

#: Largest scale factor and rotation (degrees) any image may use (texture-wide defects included);
#: the zones are sized so that a window of this extent always fits inside the photo.
MAX_SCALE = 1.08
MAX_ANGLE = 10.0
#: Normal variation between images (a production line's), drawn per image.
NORMAL_ANGLE = 2.0
GAIN = 0.04  # +-4 % brightness gain
GAMMA = 0.04  # gamma in 1 +- 0.04
GRADIENT = 0.03  # up to +-3 % brightness change across the image
NOISE = (0.8, 2.0)  # sensor noise standard deviation, grey levels
#: Minimum distance (pixels, along at least one axis) between a training crop's centre and the test box
#: (larger photos get a larger gap, up to a crop side: see :func:`zones_for`).
TRAIN_GAP = 96


@dataclass(frozen=True)
class PhotoSource:
    """One real photo used as a category: where it comes from and what it shows."""

    name: str
    package: str  # the installed package shipping it
    loader: str  # attribute of skimage.data
    description: str
    colour: bool
    oriented: bool  # has a dominant direction (rotation defects are visible)
    region: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)  # usable (top, bottom, left, right), fractions
    split: str = "eval"  # "eval": realistic dev set only; "train": may be used to train Myriad's LMM, never evaluated on

    def as_dict(self) -> dict:
        """JSON-ready description (with the photo's native size)."""
        height, width = photo(self.name).shape[:2]
        return {
            "photo": f"{self.package}: skimage.data.{self.loader}()",
            "description": self.description,
            "native_size": [int(height), int(width)],
            "colour": self.colour,
            "oriented": self.oriented,
            "usable_region_px": list(_region_px(self)),
            "split": self.split,
        }


PHOTOS: dict[str, PhotoSource] = {
    p.name: p
    for p in (
        PhotoSource("brick", "scikit-image", "brick", "brick wall, grey, 512 x 512", False, True),
        PhotoSource("grass", "scikit-image", "grass", "grass, grey, 512 x 512", False, False),
        PhotoSource("gravel", "scikit-image", "gravel", "gravel, grey, 512 x 512", False, False),
        PhotoSource("tissue", "scikit-image", "immunohistochemistry", "stained tissue micrograph, colour, 512 x 512", True, False),
        PhotoSource(
            "fundus", "scikit-image", "retina", "retina fundus photo (inner square, no border), colour, 1411 x 1411",
            True, False, region=(0.19, 0.81, 0.25, 0.81),
        ),
        PhotoSource("moon", "scikit-image", "moon", "lunar surface, grey, 512 x 512", False, False, split="train"),
        PhotoSource("stars", "scikit-image", "hubble_deep_field", "Hubble deep field, colour, 872 x 1000", True, False, split="train"),
    )
}
#: Photos the realistic dev set is made of (its categories); never to be used for training Myriad's LMM.
EVAL_PHOTOS: tuple[str, ...] = tuple(name for name, p in PHOTOS.items() if p.split == "eval")
#: Photos that may be used (with the training kinds) to make LMM training data; never in the realistic dev set.
TRAIN_PHOTOS: tuple[str, ...] = tuple(name for name, p in PHOTOS.items() if p.split == "train")


def get_photo_source(name: str) -> PhotoSource:
    """The photo category ``name``; :class:`ConfigError` lists the available ones."""
    try:
        return PHOTOS[name]
    except KeyError:
        raise ConfigError(f"unknown realistic category {name!r}; available: {', '.join(PHOTOS)}") from None


@lru_cache(maxsize=None)
def photo(name: str) -> "np.ndarray":
    """The category's photo, ``uint8`` H x W (grey) or H x W x 3, read-only, loaded once per process."""
    import numpy as np
    from skimage import data

    source = get_photo_source(name)
    try:
        image = np.asarray(getattr(data, source.loader)())
    except Exception as exc:  # noqa: BLE001 - a missing optional data file: say which
        raise ConfigError(f"realistic category {name!r}: cannot load skimage.data.{source.loader}(): {exc}") from exc
    if image.ndim == 3:
        image = image[..., :3]
        if not source.colour:
            image = image.mean(axis=2)
    image = np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8))
    image.setflags(write=False)
    return image


@lru_cache(maxsize=None)
def _coefficients(name: str) -> "np.ndarray":
    """Cubic spline coefficients of the photo, C x H x W float32 (prefiltered once)."""
    import numpy as np
    from scipy import ndimage

    image = photo(name).astype(np.float32)
    planes = image[None] if image.ndim == 2 else np.moveaxis(image, 2, 0)
    out = np.stack([ndimage.spline_filter(p, order=3, mode="mirror", output=np.float32) for p in planes])
    out.setflags(write=False)
    return out


def _region_px(source: PhotoSource) -> tuple[int, int, int, int]:
    height, width = photo(source.name).shape[:2]
    top, bottom, left, right = source.region
    return int(round(top * height)), int(round(bottom * height)), int(round(left * width)), int(round(right * width))


def half_extent(size: int, scale: float = MAX_SCALE, angle: float = MAX_ANGLE) -> float:
    """Half the side of the photo window a ``size`` crop at ``scale`` and ``angle`` (degrees) can touch."""
    a = math.radians(abs(angle))
    return size * scale * (math.cos(a) + math.sin(a)) / 2.0 + 3.0  # + cubic spline support


@dataclass(frozen=True)
class Zones:
    """Where crop centres may lie: the test box and the (L-shaped) training region, in photo pixels."""

    low_y: float
    high_y: float
    low_x: float
    high_x: float
    test_span: float  # the test box is [high - test_span, high] on both axes
    gap: float = TRAIN_GAP  # training centres lie at least this far from the test box along one axis

    @property
    def test_start(self) -> tuple[float, float]:
        """Top-left corner of the test box."""
        return self.high_y - self.test_span, self.high_x - self.test_span

    def is_train(self, cy: float, cx: float) -> bool:
        """Whether a centre lies in the training region (>= ``gap`` from the test box on one axis)."""
        ty, tx = self.test_start
        return cy <= ty - self.gap or cx <= tx - self.gap

    def as_dict(self) -> dict:
        """JSON-ready zone description."""
        ty, tx = self.test_start
        return {
            "centre_range_y": [round(self.low_y, 1), round(self.high_y, 1)],
            "centre_range_x": [round(self.low_x, 1), round(self.high_x, 1)],
            "test_box": {"y": [round(ty, 1), round(self.high_y, 1)], "x": [round(tx, 1), round(self.high_x, 1)]},
            "train_rule": f"centre y <= {ty - self.gap:.1f} or centre x <= {tx - self.gap:.1f}",
        }


def zones_for(name: str, size: int) -> Zones:
    """The train/test zones of category ``name`` for ``size`` crops; refuses crops the photo cannot hold."""
    source = get_photo_source(name)
    top, bottom, left, right = _region_px(source)
    half = half_extent(size)
    low_y, high_y, low_x, high_x = top + half, bottom - half, left + half, right - half
    span = min(high_y - low_y, high_x - low_x)
    if span < TRAIN_GAP + 40:
        largest = _largest_size(source)
        raise ConfigError(
            f"--size {size}: category {name!r} ({bottom - top} x {right - left} px usable) cannot hold separate train and "
            f"test crops of that size without upscaling; the largest is {largest}"
        )
    test_span = max(48.0, 0.25 * span)
    # As far apart as the photo allows: up to a full crop side (no shared pixels), keeping >= TRAIN_GAP of training range.
    gap = min(max(float(TRAIN_GAP), span - test_span - TRAIN_GAP), size + 6.0)
    return Zones(low_y, high_y, low_x, high_x, test_span, gap)


def _largest_size(source: PhotoSource) -> int:
    top, bottom, left, right = _region_px(source)
    usable = min(bottom - top, right - left)
    size = usable
    while size > 8 and usable - 2 * half_extent(size) < TRAIN_GAP + 40:
        size -= 8
    return size


@dataclass(frozen=True)
class Pose:
    """How one image sees the photo: geometry, lighting and sensor noise."""

    cy: float
    cx: float
    angle: float  # degrees
    scale: float  # photo pixels per output pixel (1 = native resolution)
    gain: float
    gamma: float
    gradient: float  # brightness change across the image (fraction)
    gradient_dir: float  # radians
    noise: float  # sensor noise standard deviation, grey levels

    def as_dict(self) -> dict:
        """Rounded, JSON-ready values."""
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


def draw_pose(rng: "np.random.Generator", zones: Zones, split: str) -> Pose:
    """A random pose whose centre lies in the ``split`` zone: "train", "test", or "any" (the whole centre range)."""
    if split == "any":
        cy, cx = float(rng.uniform(zones.low_y, zones.high_y)), float(rng.uniform(zones.low_x, zones.high_x))
    elif split == "test":
        ty, tx = zones.test_start
        cy, cx = float(rng.uniform(ty, zones.high_y)), float(rng.uniform(tx, zones.high_x))
    else:
        while True:
            cy, cx = float(rng.uniform(zones.low_y, zones.high_y)), float(rng.uniform(zones.low_x, zones.high_x))
            if zones.is_train(cy, cx):
                break
    return Pose(
        cy=cy,
        cx=cx,
        angle=float(rng.uniform(-NORMAL_ANGLE, NORMAL_ANGLE)),
        scale=1.0,
        gain=float(rng.uniform(1 - GAIN, 1 + GAIN)),
        gamma=float(rng.uniform(1 - GAMMA, 1 + GAMMA)),
        gradient=float(rng.uniform(-GRADIENT, GRADIENT)),
        gradient_dir=float(rng.uniform(0, 2 * math.pi)),
        noise=float(rng.uniform(*NOISE)),
    )


def render_material(name: str, pose: Pose, size: int) -> "np.ndarray":
    """The photo seen through ``pose`` (geometry only): float32 ``size x size x C`` in grey levels, C = 1 or 3."""
    import numpy as np
    from scipy import ndimage

    if pose.scale > MAX_SCALE + 1e-9 or abs(pose.angle) > MAX_ANGLE + 1e-9:
        raise ValueError(f"pose outside the zone limits (scale {pose.scale}, angle {pose.angle})")
    coefficients = _coefficients(name)
    axis = np.arange(size, dtype=np.float32) - (size - 1) / 2.0
    v, u = np.meshgrid(axis, axis, indexing="ij")
    a = math.radians(pose.angle)
    c, s = math.cos(a) * pose.scale, math.sin(a) * pose.scale
    ys = pose.cy + c * v - s * u
    xs = pose.cx + s * v + c * u
    planes = [
        ndimage.map_coordinates(plane, [ys, xs], order=3, mode="mirror", prefilter=False, output=np.float32)
        for plane in coefficients
    ]
    return np.stack(planes, axis=2)


def finish(material: "np.ndarray", pose: Pose, noise: "np.ndarray", extra_noise: "np.ndarray | None" = None) -> "np.ndarray":
    """Lighting then sensor noise then 8-bit quantisation: ``uint8 size x size x 3`` (grey repeated)."""
    import numpy as np

    size = material.shape[0]
    axis = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) / size
    v, u = np.meshgrid(axis, axis, indexing="ij")
    ramp = 1.0 + pose.gradient * (math.cos(pose.gradient_dir) * u + math.sin(pose.gradient_dir) * v)
    value = np.clip(material, 0.0, 255.0) / 255.0
    lit = 255.0 * pose.gain * np.power(value, pose.gamma) * ramp[..., None]
    lit = lit + noise * pose.noise
    if extra_noise is not None:
        lit = lit + extra_noise
    out = np.clip(np.rint(lit), 0, 255).astype(np.uint8)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return out


def luminance(image: "np.ndarray") -> "np.ndarray":
    """Mean of the colour channels as float32 (H x W)."""
    import numpy as np

    arr = image.astype(np.float32)
    return arr.mean(axis=2) if arr.ndim == 3 else arr


def window_overlap(test: "list[tuple[float, float, float]]", train: "list[tuple[float, float, float]]", shape: tuple[int, int]) -> dict:
    """How much test windows share source pixels with training windows (axis-aligned approximation).

    Windows are ``(cy, cx, half_side)``. Returns the mean and largest fraction of a test
    window covered by the single most-overlapping training window, and the mean fraction of
    a test window's pixels that lie inside the union of all training windows.
    """
    import numpy as np

    if not test or not train:
        return {"max_single": 0.0, "mean_single": 0.0, "mean_union": 0.0}
    height, width = shape
    union = np.zeros((height, width), dtype=bool)
    boxes = []
    for cy, cx, h in train:
        y0, y1, x0, x1 = (int(max(0, round(cy - h))), int(min(height, round(cy + h))),
                          int(max(0, round(cx - h))), int(min(width, round(cx + h))))
        union[y0:y1, x0:x1] = True
        boxes.append((cy - h, cy + h, cx - h, cx + h))
    train_boxes = np.asarray(boxes)
    single, covered = [], []
    for cy, cx, h in test:
        dy = np.clip(np.minimum(train_boxes[:, 1], cy + h) - np.maximum(train_boxes[:, 0], cy - h), 0, None)
        dx = np.clip(np.minimum(train_boxes[:, 3], cx + h) - np.maximum(train_boxes[:, 2], cx - h), 0, None)
        single.append(float((dy * dx).max() / (2 * h) ** 2))
        y0, y1, x0, x1 = (int(max(0, round(cy - h))), int(min(height, round(cy + h))),
                          int(max(0, round(cx - h))), int(min(width, round(cx + h))))
        covered.append(float(union[y0:y1, x0:x1].mean()))
    return {
        "max_single": round(max(single), 3),
        "mean_single": round(float(np.mean(single)), 3),
        "mean_union": round(float(np.mean(covered)), 3),
    }
