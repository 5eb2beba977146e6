"""Image loading and preprocessing shared by experts and models.

:func:`load_image` always returns an RGB ``uint8`` array ``H x W x 3``, whatever the
file holds (grayscale, RGBA, palette, 16-bit); errors name the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Literal, Sequence

from myriad.errors import ImageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Images above this many pixels are refused (a decompression bomb or a mistake).
MAX_PIXELS = 16384 * 16384

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)
NORMALISATIONS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD), "half": (HALF_MEAN, HALF_STD)}
Normalisation = Literal["clip", "imagenet", "half"]


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has an image suffix Myriad reads."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def load_image(path: str | Path) -> "np.ndarray":
    """Read an image file as RGB uint8 ``H x W x 3``.

    Grayscale is replicated to three channels, alpha is composited onto black
    (transparent areas are background), palettes are expanded and 16-bit or float
    images are rescaled to 8 bits by their bit depth.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb_array(img, source=str(path))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: image too large ({exc}); the limit is {MAX_PIXELS} pixels") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not a readable image (unknown or corrupt format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: corrupt or truncated image: {exc}") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    del np


def to_rgb_array(img: "object", source: str = "image") -> "np.ndarray":
    """Convert a PIL image of any mode to an RGB uint8 array."""
    import numpy as np
    from PIL import Image

    assert isinstance(img, Image.Image)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        maximum = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / maximum * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        arr = np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    arr = np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise ImageError(f"{source}: cannot convert mode {mode} to RGB")
    return np.ascontiguousarray(arr)


def as_rgb(image: "np.ndarray", source: str = "image") -> "np.ndarray":
    """Coerce an in-memory array (H x W, H x W x 1/3/4, any integer or float dtype) to RGB uint8."""
    import numpy as np

    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"{source}: expected H x W x 3 RGB, got an array of shape {arr.shape}")
    if arr.shape[2] == 4:
        alpha = arr[..., 3:4].astype(np.float64) / (65535.0 if arr.dtype == np.uint16 else 255.0 if arr.dtype.kind in "ui" else 1.0)
        arr = arr[..., :3] * alpha
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.uint16:
        return (arr.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ImageError(f"{source}: float image contains NaN or infinity")
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
    if arr.dtype.kind in "ui" or arr.dtype == np.bool_:
        return np.clip(arr, 0, 255).astype(np.uint8)
    raise ImageError(f"{source}: unsupported image dtype {arr.dtype}")


def check_batch(images: Sequence["np.ndarray"] | Iterable["np.ndarray"], what: str = "images") -> list["np.ndarray"]:
    """Validate a batch given to an expert; returns RGB uint8 arrays (paths are loaded)."""
    if images is None:
        raise ImageError(f"no {what} given")
    batch = []
    for index, image in enumerate(images):
        if isinstance(image, (str, Path)):
            batch.append(load_image(image))
        else:
            batch.append(as_rgb(image, source=f"{what}[{index}]"))
    if not batch:
        raise ImageError(f"no {what} given (empty batch)")
    return batch


def to_tensor(
    images: Sequence["np.ndarray"],
    size: int | tuple[int, int],
    normalisation: Normalisation = "imagenet",
    crop: int | None = None,
    interpolation: str = "bilinear",
) -> "torch.Tensor":
    """Resize (and optionally center-crop) RGB uint8 images to a normalised float batch.

    ``size`` is an exact ``(H, W)`` or an int for a square; ``crop`` center-crops after
    resizing. Returns ``B x 3 x H x W`` float32.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    height, width = (size, size) if isinstance(size, int) else size
    mean, std = NORMALISATIONS[normalisation]
    out = []
    for image in images:
        t = torch.from_numpy(np.require(image, requirements=("C", "W"))).permute(2, 0, 1)[None].float().div_(255.0)
        if t.shape[-2:] != (height, width):
            kwargs = {"antialias": True} if interpolation in ("bilinear", "bicubic") else {}
            t = F.interpolate(t, size=(height, width), mode=interpolation, align_corners=False, **kwargs)
        out.append(t)
    batch = torch.cat(out).clamp_(0.0, 1.0)
    if crop is not None and crop < min(height, width):
        top, left = (height - crop) // 2, (width - crop) // 2
        batch = batch[..., top : top + crop, left : left + crop]
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    return (batch - mean_t) / std_t


def resize_map(anomaly_map: "np.ndarray | torch.Tensor", height: int, width: int) -> "np.ndarray":
    """Bilinearly resize a 2-D map (or ``B x h x w`` batch) to ``height x width`` float32."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(anomaly_map, dtype=torch.float32)
    squeeze = t.ndim == 2
    t = t[None, None] if squeeze else t[:, None]
    t = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)
    arr = t[:, 0].numpy().astype(np.float32)
    return arr[0] if squeeze else arr
