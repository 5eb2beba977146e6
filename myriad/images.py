"""Image loading and preprocessing shared by experts and models.

:func:`load_image` always returns an RGB ``uint8`` array ``H x W x 3``, whatever the
file holds (grayscale, RGBA, palette, 16-bit); errors name the file.

Only the raster formats in :data:`IMAGE_FORMATS` are opened (never EPS/PS/PDF, which Pillow
would hand to Ghostscript), and an image's size is read from its header and checked against
:data:`MAX_PIXELS` before any pixel is decoded. Nothing here changes Pillow's process-wide
settings (``PIL.Image.MAX_IMAGE_PIXELS`` is left alone), so concurrent callers cannot race.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterable, Iterator, Literal, Sequence

from myriad.errors import ImageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Pillow format names Myriad opens, whatever a file's suffix says; every other format is refused.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
#: Images above this many pixels (8192 x 8192) are refused from the header, before decoding
#: (a decompression bomb or a mistake). Below Pillow's own bomb threshold, so it always applies first.
MAX_PIXELS = 8192 * 8192

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


def read_image_size(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header alone, checked against the pixel limit.

    Raises :class:`ImageError` naming the file when it is missing, not one of
    :data:`IMAGE_FORMATS`, corrupt, or larger than ``max_pixels`` (default :data:`MAX_PIXELS`).
    """
    with open_checked(Path(path), max_pixels) as img:
        return img.size


def load_image(path: str | Path, max_pixels: int | None = None) -> "np.ndarray":
    """Read an image file as RGB uint8 ``H x W x 3``.

    Grayscale is replicated to three channels, alpha is composited onto black
    (transparent areas are background), palettes are expanded and 16-bit or float
    images are rescaled to 8 bits by their bit depth. Files of other formats than
    :data:`IMAGE_FORMATS`, or over ``max_pixels`` (default :data:`MAX_PIXELS`, checked from the
    header before decoding), are refused with an :class:`ImageError` naming the file.
    """
    path = Path(path)
    with open_checked(path, max_pixels) as img:
        return decode_rgb(img, str(path))


def decode_rgb(img: "object", source: str) -> "np.ndarray":
    """Decode an image opened by :func:`open_checked` to RGB uint8 (:func:`to_rgb_array`); a decompression bomb or a
    corrupt or truncated file is an :class:`ImageError` naming ``source``."""
    from PIL import Image

    try:
        img.load()  # type: ignore[attr-defined]
        return to_rgb_array(img, source=source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{source}: image too large ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{source}: corrupt or truncated image: {exc}") from exc


def check_pixels(width: int, height: int, source: str, max_pixels: int | None = None) -> None:
    """Refuse ``width x height`` above ``max_pixels`` (default :data:`MAX_PIXELS`) with an error naming ``source``."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if width * height > limit:
        raise ImageError(
            f"{source}: image too large: {width} x {height} = {width * height} pixels; the limit is {limit} pixels"
        )


@contextlib.contextmanager
def open_checked(source: "Path | BinaryIO", max_pixels: int | None = None, name: str | None = None) -> Iterator["object"]:
    """Open a file, or an open binary stream, lazily (header only) as one of :data:`IMAGE_FORMATS`, refusing it above
    the pixel limit; each :class:`ImageError` names ``name`` (default: the path)."""
    from PIL import Image, UnidentifiedImageError

    shown = str(source) if name is None else name
    if isinstance(source, Path):
        if not source.exists():
            raise ImageError(f"{shown}: file not found")
        if source.is_dir():
            raise ImageError(f"{shown}: is a folder, not an image")
    try:
        img = Image.open(source, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own hard limit, far above ours
        raise ImageError(f"{shown}: image too large ({exc}); the limit is {MAX_PIXELS if max_pixels is None else max_pixels} pixels") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            f"{shown}: not a readable image (unknown or corrupt format; accepted: {', '.join(IMAGE_FORMATS)})"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{shown}: corrupt or truncated image: {exc}") from exc
    with img:
        width, height = img.size
        check_pixels(width, height, shown, max_pixels)
        yield img


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
