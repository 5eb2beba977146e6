"""Heat-map overlays of calibrated anomaly maps (used by ``myriad eval`` and ``myriad inspect``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from myriad.calibration import DECISION_THRESHOLD

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["overlay", "resize_to"]


def resize_to(values: "np.ndarray", height: int, width: int) -> "np.ndarray":
    """Resize a 2-D float map to ``height x width`` (bilinear, antialiased when shrinking)."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(values, dtype=np.float32)
    if arr.shape == (height, width):
        return arr
    return np.asarray(Image.fromarray(arr, mode="F").resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def overlay(
    image: "np.ndarray",
    calibrated_map: "np.ndarray",
    caption: str | None = None,
    alpha: float = 0.6,
    threshold: float = DECISION_THRESHOLD,
    colormap: str = "jet",
    floor: float = 0.2,
) -> "np.ndarray":
    """Blend a calibrated anomaly map over ``image``; returns RGB ``uint8``.

    ``calibrated_map`` is on the host's calibrated scale (0 = typical normal, 0.5 = the
    decision threshold, 1 = clearly anomalous; see :mod:`myriad.calibration`) and is resized
    to the image when needed. Colour opacity grows from 0 at ``floor`` and below (normal:
    the image shows through) to ``alpha`` at the threshold and above, so only evidence is
    coloured; regions above the threshold are outlined in white. ``caption`` adds a text band under the image
    (the result is then taller than the input).
    """
    import numpy as np
    from matplotlib import colormaps
    from scipy.ndimage import binary_dilation, binary_erosion

    from myriad.images import as_rgb

    rgb = as_rgb(image, source="overlay image")
    height, width = rgb.shape[:2]
    amap = np.asarray(calibrated_map, dtype=np.float32)
    amap = np.squeeze(amap)
    if amap.ndim != 2:
        raise ValueError(f"calibrated_map must be 2-D (H x W), got shape {np.shape(calibrated_map)}")
    amap = np.clip(np.nan_to_num(resize_to(amap, height, width), nan=0.0), 0.0, 1.0)

    colours = colormaps[colormap](amap)[..., :3].astype(np.float32) * 255.0
    low = min(max(floor, 0.0), threshold * 0.99)
    weight = (alpha * np.clip((amap - low) / max(threshold - low, 1e-6), 0.0, 1.0))[..., None]
    out = rgb.astype(np.float32) * (1.0 - weight) + colours * weight

    above = amap > threshold
    if above.any() and not above.all():
        edge = above & ~binary_erosion(above)
        thickness = max(1, round(min(height, width) / 256))
        if thickness > 1:
            edge = binary_dilation(edge, iterations=thickness - 1)
        out[edge] = 255.0
    result = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if caption:
        result = _with_caption(result, caption)
    return result


def _with_caption(image: "np.ndarray", caption: str) -> "np.ndarray":
    """Append a black band with ``caption`` (white text, wrapped to the width) under ``image``."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    width = image.shape[1]
    font_size = max(10, min(28, width // 20))
    try:
        font = ImageFont.load_default(size=font_size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for paragraph in caption.splitlines() or [""]:
        words, line = paragraph.split(" "), ""
        for word in words:
            trial = f"{line} {word}".strip()
            if line and probe.textlength(trial, font=font) > width - 8:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    line_height = int(font_size * 1.25)
    band = Image.new("RGB", (width, line_height * len(lines) + 6), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((4, 3 + i * line_height), line, fill=(255, 255, 255), font=font)
    return np.concatenate([image, np.asarray(band)], axis=0)
