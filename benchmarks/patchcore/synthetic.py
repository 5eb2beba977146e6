"""In-memory test images for the PatchCore benchmarks: scikit-image textures and synthetic defects.

Normal images are random crops (flips, small brightness jitter) of the 512 x 512
grayscale textures bundled with scikit-image (brick, grass, gravel), as RGB.
Defects come in two sizes:

- ``small``: a thin scratch, 2 px wide and 1/6 of the image long, brighter or darker
  than the surface;
- ``large``: an elliptic patch (about 1/4 of the image across) of a foreign texture
  with the surface's own brightness and contrast (a piece of other material).

Each defect returns its pixel mask.
"""

from __future__ import annotations

import numpy as np

TEXTURES = ("brick", "grass", "gravel")


def texture(name: str) -> np.ndarray:
    """A bundled scikit-image texture (512 x 512 uint8 grayscale)."""
    import skimage.data

    return getattr(skimage.data, name)()


def normal_crops(name: str, n: int, size: int = 256, seed: int = 0, source: int | None = None) -> list[np.ndarray]:
    """``n`` RGB crops of texture ``name``; ``source`` px crops resized to ``size`` (default: no resize)."""
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    tex = texture(name)
    side = source or size
    out = []
    for _ in range(n):
        y, x = rng.integers(0, tex.shape[0] - side + 1), rng.integers(0, tex.shape[1] - side + 1)
        crop = tex[y : y + side, x : x + side].astype(np.float32)
        if side != size:
            crop = resize(crop, (size, size), preserve_range=True, anti_aliasing=True)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = np.clip(crop * rng.uniform(0.95, 1.05), 0, 255)
        out.append(np.ascontiguousarray(np.repeat(crop[..., None], 3, axis=2).astype(np.uint8)))
    return out


def add_scratch(image: np.ndarray, rng: np.random.Generator, length: float = 1 / 6, width: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A thin straight scratch; returns the new image and its boolean mask."""
    from skimage.draw import polygon

    h, w = image.shape[:2]
    half = length * min(h, w) / 2
    cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
    angle = rng.uniform(0, np.pi)
    dy, dx = np.sin(angle), np.cos(angle)
    ny, nx = -dx * width / 2, dy * width / 2
    rows = [cy - dy * half + ny, cy + dy * half + ny, cy + dy * half - ny, cy - dy * half - ny]
    cols = [cx - dx * half + nx, cx + dx * half + nx, cx + dx * half - nx, cx - dx * half - nx]
    rr, cc = polygon(rows, cols, shape=(h, w))
    mask = np.zeros((h, w), dtype=bool)
    mask[rr, cc] = True
    out = image.copy()
    value = 20 if image.mean() > 128 else 235
    out[mask] = value
    return out, mask


def add_stain(image: np.ndarray, rng: np.random.Generator, diameter: float = 1 / 4, foreign: str = "gravel") -> tuple[np.ndarray, np.ndarray]:
    """An elliptic patch of foreign texture, brightness-matched; returns the new image and its mask."""
    from skimage.draw import ellipse

    h, w = image.shape[:2]
    ry, rx = diameter * h / 2 * rng.uniform(0.8, 1.2), diameter * w / 2 * rng.uniform(0.8, 1.2)
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    rr, cc = ellipse(cy, cx, ry, rx, shape=(h, w), rotation=rng.uniform(0, np.pi))
    mask = np.zeros((h, w), dtype=bool)
    mask[rr, cc] = True
    other = texture(foreign)
    y, x = rng.integers(0, other.shape[0] - h + 1), rng.integers(0, other.shape[1] - w + 1)
    patch = other[y : y + h, x : x + w].astype(np.float32)
    out = image.astype(np.float32)
    region = out[mask][:, 0]
    # same mean brightness and contrast as the surface it replaces: only the texture differs
    foreign_px = (patch[mask] - patch[mask].mean()) / (patch[mask].std() + 1e-6) * region.std() + region.mean()
    out[mask] = 0.2 * out[mask] + 0.8 * foreign_px[:, None]
    return np.clip(out, 0, 255).astype(np.uint8), mask


def defect_set(name: str, n: int, kind: str, size: int = 256, seed: int = 100) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` crops of ``name`` with a ``small`` (scratch) or ``large`` (stain) defect, and their masks."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    foreign = "brick" if name == "gravel" else "gravel"
    for crop in normal_crops(name, n, size, seed=seed):
        image, mask = add_scratch(crop, rng) if kind == "small" else add_stain(crop, rng, foreign=foreign)
        images.append(image)
        masks.append(mask)
    return images, masks
