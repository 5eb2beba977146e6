"""Low-frequency brightness and colour of an image, sampled on a grid (pure numpy / scipy).

A stain, a blob or a colour patch multiplies the surface's tone over an area and keeps its
texture. In log intensity a multiplication is a shift, so the features are local means of
``log(I + 1/64)``: the log-luminance (the mean of the three channels' logs) and two opponent
chroma channels (``log R - log G`` and ``log B - (log R + log G) / 2``; zero on grey photos).
Per channel, per scale ``s``: the Gaussian mean of sigma ``s``, and that mean minus the
surroundings' (a Gaussian of sigma ``context``): where the area is, and how it stands out
from what is around it. Sampled every ``stride`` pixels from ``stride // 2``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["FLOOR", "feature_count", "tone_channels", "tone_features"]

#: Added to intensities in [0, 1] before the log: keeps black pixels finite and dark noise small.
FLOOR = 1.0 / 64.0


def feature_count(scales: Sequence[float]) -> int:
    """Features per grid cell: 3 channels x 2 per scale."""
    return 3 * 2 * len(scales)


def tone_channels(image: "np.ndarray") -> "np.ndarray":
    """``3 x H x W`` float32: log-luminance and two opponent log-chroma channels of an RGB uint8 image."""
    import numpy as np

    logs = np.log(image.astype(np.float32) / np.float32(255.0) + np.float32(FLOOR))
    red, green, blue = logs[..., 0], logs[..., 1], logs[..., 2]
    return np.stack([logs.mean(axis=2), red - green, blue - 0.5 * (red + green)]).astype(np.float32)


def tone_features(image: "np.ndarray", scales: Sequence[float], context: float, stride: int) -> "np.ndarray":
    """``h x w x D`` float32 features of an RGB uint8 image (``D`` = :func:`feature_count`)."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    offset = stride // 2
    out = []
    for channel in tone_channels(image):
        surroundings = gaussian_filter(channel, context, mode="reflect", truncate=3.0)
        for scale in scales:
            local = gaussian_filter(channel, scale, mode="reflect", truncate=3.0)
            out.append(local[offset::stride, offset::stride])
            out.append((local - surroundings)[offset::stride, offset::stride])
    return np.ascontiguousarray(np.stack(out, axis=-1), dtype=np.float32)
