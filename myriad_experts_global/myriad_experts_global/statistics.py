"""Pure compute of the texture-wide expert: window statistics of feature maps and a Gaussian model.

A texture-wide defect (the weave a few percent denser, slightly blurred or noisier,
rotated) changes little at any one place but shifts the *distribution* of the
backbone's responses over the whole image. Per stage, the per-channel mean and
standard deviation of the feature map over a window summarise that distribution;
the vector of all stages' statistics is modelled by one Gaussian fitted on normal
windows (mean, Ledoit-Wolf-shrunk covariance), and a window is scored by its
Mahalanobis distance to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch


def window_fractions(window: float, stride: float) -> list[float]:
    """Start positions (fractions of the image side) of windows ``window`` wide every ``stride``, last one flush."""
    if window >= 1.0:
        return [0.0]
    count = int(math.floor((1.0 - window) / stride + 1e-9)) + 1
    starts = [min(i * stride, 1.0 - window) for i in range(count)]
    if starts[-1] < 1.0 - window - 1e-9:
        starts.append(1.0 - window)
    return starts


def _cells(start: float, window: float, size: int) -> tuple[int, int]:
    """The cells ``[lo, hi)`` of a grid of ``size`` cells that a window ``[start, start + window]`` covers."""
    lo = min(int(math.floor(start * size + 1e-9)), size - 1)
    hi = max(lo + 1, min(size, int(math.ceil((start + window) * size - 1e-9))))
    return lo, hi


def window_statistics(
    features: Sequence["torch.Tensor"], window: float, stride: float
) -> "torch.Tensor":
    """Per-window ``[mean, std]`` of every channel of every stage: ``B x W x D`` (float32).

    ``features`` are ``B x C_l x h_l x w_l`` maps of the same images (shallowest first).
    Windows are laid out as fractions of the image side (:func:`window_fractions`) and
    mapped onto each stage's own grid, so window ``k`` covers the same part of the image
    at every stage (at least one cell where a grid is coarse). ``D = 2 * sum(C_l)``.
    """
    import torch

    starts = window_fractions(window, stride)
    per_stage = []
    for fmap in features:
        fmap = fmap.float()
        _, _, h, w = fmap.shape
        stats = []
        for top_start in starts:
            top, bottom = _cells(top_start, window, h)
            for left_start in starts:
                left, right = _cells(left_start, window, w)
                cell = fmap[:, :, top:bottom, left:right].flatten(2)
                stats.append(torch.cat([cell.mean(-1), cell.std(-1, unbiased=False)], dim=1))
        per_stage.append(torch.stack(stats, dim=1))  # B x W x 2C
    return torch.cat(per_stage, dim=2)


@dataclass
class GaussianModel:
    """A Gaussian over statistic vectors: ``mean`` (D,) and ``precision`` (D x D), float64."""

    mean: "np.ndarray"
    precision: "np.ndarray"
    shrinkage: float
    samples: int

    @classmethod
    def fit(cls, samples: "np.ndarray", shrinkage: float | None = None) -> "GaussianModel":
        """Fit on ``N x D`` samples; covariance shrunk towards a scaled identity (Ledoit-Wolf when None)."""
        import numpy as np

        x = np.asarray(samples, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"the Gaussian model needs at least 2 sample vectors, got shape {x.shape}")
        mean = x.mean(axis=0)
        centred = x - mean
        if shrinkage is None:
            from sklearn.covariance import ledoit_wolf

            covariance, shrinkage = ledoit_wolf(x)
        else:
            empirical = centred.T @ centred / len(x)
            target = np.trace(empirical) / x.shape[1]
            covariance = (1.0 - shrinkage) * empirical + shrinkage * target * np.eye(x.shape[1])
        # a small floor keeps the precision finite when features are constant (e.g. one reference image)
        floor = 1e-6 * max(float(np.trace(covariance)) / x.shape[1], 1e-12)
        precision = np.linalg.inv(covariance + floor * np.eye(x.shape[1]))
        return cls(mean=mean, precision=precision, shrinkage=float(shrinkage), samples=len(x))

    def distances(self, samples: "np.ndarray") -> "np.ndarray":
        """Mahalanobis distance of each row of ``N x D`` samples (float64)."""
        import numpy as np

        centred = np.asarray(samples, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", centred, self.precision, centred), 0.0))
