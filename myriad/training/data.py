"""Training data: categories of normal images and seeded synthetic anomalies made from them.

A category is either a texture source of :mod:`myriad.synthetic.textures`, an
"object" (a fixed window of one of scikit-image's bundled photos, jittered a little
per image, so it behaves like an aligned MVTec object), or a folder of normal
images. Every item is defined by ``(category, index, anomalous)`` and regenerated
deterministically from the seed, so nothing but expert maps needs caching.

Anomalies for training: NSA (Poisson-blended patches from another image of the same
category, as the reference) and, with probability ``painted_fraction``, one of the
*training* defect kinds of :mod:`myriad.synthetic.defects` (disjoint from the kinds
the development benchmark evaluates).

A category can also be one of the realistic preset's *training* photos (``data.photos``):
native-resolution crops rendered as the realistic dev set renders its normals (pose,
lighting, sensor noise). Their painted anomalies are the realistic *training* kinds
(scuff, dent shade, texture contrast, texture warp), drawn on the very crop of the normal
item; the realistic dev set's photos and kinds never appear in training.

With ``data.visible_fraction`` > 0 that share of the anomalous items (drawn from its own seeded
stream, so the other items stay as they were) is one of the visible preset's *local training*
kinds (:data:`~myriad.synthetic.visible_defects.VISIBLE_TRAIN_KINDS`: blotch, colour patch, smear,
chip), painted on the normal item itself, on any category, and redrawn until it is small (the
preset's area range, 0.1-3 % of the image) and at least ``medium`` by the preset's own visibility
measure: the small, faint but true alarms an LMM must learn to confirm. The visible preset's
evaluation kinds and photos never appear in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from myriad.errors import DatasetError
from myriad.training.config import DataConfig

#: Default training categories: none of them is used by the development benchmark.
TRAIN_TEXTURES = ("tissue", "concrete")
#: name -> (scikit-image photo, (top, left, height, width) as fractions of the photo)
TRAIN_OBJECTS: dict[str, tuple[str, tuple[float, float, float, float]]] = {
    "astronaut": ("astronaut", (0.05, 0.3, 0.5, 0.45)),
    "coffee": ("coffee", (0.05, 0.15, 0.75, 0.55)),
    "cat": ("chelsea", (0.0, 0.2, 0.9, 0.55)),
    "rocket": ("rocket", (0.0, 0.25, 0.9, 0.45)),
    "coins": ("coins", (0.0, 0.0, 0.6, 0.6)),
    "camera": ("camera", (0.1, 0.2, 0.6, 0.6)),
    "moon": ("moon", (0.2, 0.2, 0.6, 0.6)),
    "galaxy": ("hubble_deep_field", (0.2, 0.2, 0.5, 0.5)),
    "retina": ("retina", (0.2, 0.2, 0.6, 0.6)),
    "clock": ("clock", (0.0, 0.1, 1.0, 0.75)),
}
DEFAULT_CATEGORIES = TRAIN_TEXTURES + tuple(TRAIN_OBJECTS)
#: prefix of the categories made from realistic training photos (``data.photos``)
PHOTO_PREFIX = "photo-"
#: objects tolerate smaller resizes of pasted patches than textures (the reference's bounds)
OBJECT_RESIZE, TEXTURE_RESIZE = (0.7, 1.3), (0.5, 2.0)


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    from skimage import data

    from myriad.images import as_rgb

    return as_rgb(getattr(data, name)(), source=f"skimage.data.{name}")


def _object_image(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    from myriad.synthetic.textures import resize_rgb

    photo_name, (top, left, height, width) = TRAIN_OBJECTS[name]
    photo = _photo(photo_name)
    h, w = photo.shape[:2]
    jitter = rng.uniform(-0.03, 0.03, 2)
    t = int(np.clip(top + jitter[0], 0, 1 - height) * h)
    l = int(np.clip(left + jitter[1], 0, 1 - width) * w)
    crop = photo[t : t + int(height * h), l : l + int(width * w)].astype(np.float32)
    crop = crop * rng.uniform(0.92, 1.08) + rng.normal(0, 2.0, crop.shape)
    return resize_rgb(np.clip(crop, 0, 255).astype(np.uint8), size, size)


@dataclass(frozen=True)
class TrainCategory:
    """One category: a generator of normal images and the NSA settings that suit it."""

    name: str
    kind: str  # "texture", "object", "folder" or "photo"
    make: Callable[[np.random.Generator, int], np.ndarray]
    resize_bounds: tuple[float, float]
    #: the ``skimage.data`` photo the images are cut from (None: procedural texture or a folder)
    photo: str | None = None


def _folder_category(folder: Path) -> TrainCategory:
    from myriad.images import list_images, load_image
    from myriad.synthetic.textures import resize_rgb

    if not folder.is_dir():
        raise DatasetError(f"{folder}: training folder not found")
    files = list_images(folder)
    if len(files) < 2:
        raise DatasetError(f"{folder}: needs at least 2 normal images to train on, found {len(files)}")

    def make(rng: np.random.Generator, size: int) -> np.ndarray:
        return resize_rgb(load_image(files[int(rng.integers(len(files)))]), size, size)

    return TrainCategory(folder.name, "folder", make, OBJECT_RESIZE)


def _photo_category(name: str) -> TrainCategory:
    """A realistic training photo: its normal images are native-resolution crops from anywhere in the photo."""
    from myriad.synthetic.realistic_devset import render_sample

    def make(rng: np.random.Generator, size: int) -> np.ndarray:
        return render_sample(name, "good", rng, size, zone="any").image

    # "photo-" keeps it apart from the object categories cut from the same scikit-image photos (e.g. "moon")
    from myriad.synthetic.realistic_photos import get_photo_source

    return TrainCategory(f"{PHOTO_PREFIX}{name}", "photo", make, TEXTURE_RESIZE, get_photo_source(name).loader)


def build_categories(data: DataConfig) -> list[TrainCategory]:
    """The categories named by the data config (defaults: :data:`DEFAULT_CATEGORIES`)."""
    from myriad.synthetic.textures import get_texture

    names = list(data.textures) or ([] if data.folders else list(DEFAULT_CATEGORIES))
    categories = []
    for name in names:
        if name in TRAIN_OBJECTS:
            categories.append(TrainCategory(
                name, "object", lambda rng, size, n=name: _object_image(n, rng, size), OBJECT_RESIZE, TRAIN_OBJECTS[name][0]
            ))
        else:
            texture = get_texture(name)
            categories.append(TrainCategory(name, "texture", texture.sample, TEXTURE_RESIZE, texture.photo))
    categories += [_folder_category(Path(f)) for f in data.folders]
    categories += [_photo_category(name) for name in data.photos]
    if not categories:
        raise DatasetError("the training config names no categories (data.textures or data.folders)")
    return categories


def realistic_eval_overlap(categories: list[TrainCategory]) -> list[str]:
    """The categories cut from a photo that the realistic dev set evaluates on (``EVAL_PHOTOS``), as
    ``"name (skimage.data.photo)"``: an LMM trained on them must not be measured on that dev set."""
    from myriad.synthetic.realistic_photos import EVAL_PHOTOS, get_photo_source

    evaluated = {get_photo_source(name).loader for name in EVAL_PHOTOS}
    return [f"{c.name} (skimage.data.{c.photo})" for c in categories if c.photo in evaluated]


@dataclass(frozen=True)
class Item:
    """One training image: the pixels, whether it is anomalous, and its mask."""

    category: int
    index: int
    anomalous: bool
    image: np.ndarray
    mask: np.ndarray | None


class TrainingPool:
    """All training items, regenerated deterministically from ``(seed, category, index)``."""

    def __init__(self, data: DataConfig, seed: int, painted_fraction: float = 0.3) -> None:
        self.data = data
        self.seed = seed
        self.painted_fraction = painted_fraction
        self.categories = build_categories(data)

    def __len__(self) -> int:
        return len(self.categories) * self.data.images_per_category

    def _normal_rng(self, category: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, category, index + 1_000_000])

    def normal(self, category: int, index: int) -> np.ndarray:
        """Normal image ``index`` of a category (negative indices are the held-apart references)."""
        return self.categories[category].make(self._normal_rng(category, index), self.data.image_size)

    def references(self, category: int) -> list[np.ndarray]:
        """The few-shot references of a category (never used as training images)."""
        return [self.normal(category, -1 - k) for k in range(self.data.reference_shots)]

    def item(self, category: int, index: int, anomalous: bool) -> Item:
        """A normal item, or an anomalous one synthesised from it."""
        image = self.normal(category, index)
        if not anomalous:
            return Item(category, index, False, image, None)
        if self.data.visible_fraction > 0:
            visible_rng = np.random.default_rng([self.seed, category, index, 11])
            if visible_rng.random() < self.data.visible_fraction:
                made = visible_item(image, visible_rng)
                if made is not None:
                    return Item(category, index, True, *made)
        rng = np.random.default_rng([self.seed, category, index, 7])
        painted = rng.random() < self.painted_fraction
        if painted and self.categories[category].kind == "photo":
            return self._realistic_item(category, index, rng)
        if painted:
            from myriad.synthetic.defects import TRAIN_DEFECTS, applicable_defects, paint_defect

            kinds = applicable_defects(TRAIN_DEFECTS, oriented=self._oriented(category))
            kind = kinds[int(rng.integers(len(kinds)))]
            donor = self.normal((category + 1) % len(self.categories), index)
            painted_image, painted_mask = paint_defect(kind, image, rng, donor=donor)
            return Item(category, index, True, painted_image, painted_mask)
        from myriad.synthetic.nsa import NSASettings, synthesize

        n = self.data.images_per_category
        other = self.normal(category, (index + 1 + int(rng.integers(n - 1))) % n)
        settings = NSASettings(resize_bounds=self.categories[category].resize_bounds, method=self.data.synthesis)
        made = synthesize(image, other, rng, settings)
        return Item(category, index, True, made.image, made.mask)

    def _realistic_item(self, category: int, index: int, rng: np.random.Generator) -> Item:
        """A realistic training kind painted on the normal item's own crop (same pose, lighting and noise)."""
        from myriad.synthetic.realistic_defects import REALISTIC_KINDS, REALISTIC_TRAIN_KINDS
        from myriad.synthetic.realistic_devset import render_sample
        from myriad.synthetic.realistic_photos import get_photo_source

        name = self.categories[category].name.removeprefix(PHOTO_PREFIX)
        oriented = get_photo_source(name).oriented
        kinds = [k for k in REALISTIC_TRAIN_KINDS if oriented or not REALISTIC_KINDS[k].needs_orientation]
        kind = kinds[int(rng.integers(len(kinds)))]
        # the normal's generator replays its pose and noise, then paints the defect on that crop
        sample = render_sample(name, kind, self._normal_rng(category, index), self.data.image_size, zone="any",
                               seed=self.seed)
        return Item(category, index, True, sample.image, sample.mask)

    def _oriented(self, category: int) -> bool:
        from myriad.synthetic.textures import TEXTURES

        cat = self.categories[category]
        return cat.kind != "texture" or TEXTURES[cat.name].oriented


#: Draws of a visible training kind before the item falls back to the other anomalies.
VISIBLE_ATTEMPTS = 12


def visible_item(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """``(image, mask)``: one of the visible preset's local training kinds painted on ``image``
    (uint8 H x W x 3, square), small and at least ``medium`` visibility; None when no draw qualifies.
    """
    from myriad.synthetic.realistic_defects import Scene, local_visibility
    from myriad.synthetic.visible_defects import (
        VISIBLE_AREA_RANGE,
        VISIBLE_KINDS,
        VISIBLE_MIN_VISIBILITY,
        VISIBLE_TRAIN_KINDS,
    )

    height, width = image.shape[:2]
    if height != width or image.ndim != 3:
        return None
    grey = bool(np.all(image[..., 0] == image[..., 1]) and np.all(image[..., 1] == image[..., 2]))
    material = image[..., :1].astype(np.float32) if grey else image.astype(np.float32)

    def no_other_view(*_: object) -> np.ndarray:
        raise RuntimeError("visible training kinds paint on the item itself")

    scene = Scene("training", material, None, height, not grey, False, render=no_other_view, donor=no_other_view)  # type: ignore[arg-type]
    local = [k for k in VISIBLE_TRAIN_KINDS if VISIBLE_KINDS[k].family == "local"]
    kind = VISIBLE_KINDS[local[int(rng.integers(len(local)))]]
    for _ in range(VISIBLE_ATTEMPTS):
        alteration = kind.paint(scene, rng)
        mask = alteration.alpha > 0
        if not VISIBLE_AREA_RANGE[0] <= float(mask.mean()) <= VISIBLE_AREA_RANGE[1]:
            continue
        painted = np.clip(np.rint(alteration.material), 0, 255).astype(np.uint8)
        if grey:
            painted = np.repeat(painted, 3, axis=2)
        if local_visibility(image, painted, mask)[0] >= VISIBLE_MIN_VISIBILITY[0]:
            return painted, mask
    return None
