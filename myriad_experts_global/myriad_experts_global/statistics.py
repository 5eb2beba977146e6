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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` cells every ``stride`` cells covering ``0..size`` (last flush)."""
    if window >= size:
        return [0]
    starts = list(range(0, size - window + 1, max(1, stride)))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def window_statistics(
    features: Sequence["torch.Tensor"], window: float, stride: float
) -> "torch.Tensor":
    """Per-window ``[mean, std]`` of every channel of every stage: ``B x W x D`` (float32).

    ``features`` are ``B x C_l x h_l x w_l`` maps of the same images (shallowest first).
    Windows are fractions of the image side, laid on each stage's own grid, so window
    ``k`` covers the same part of the image at every stage. ``D = 2 * sum(C_l)``.
    """
    import torch

    per_stage = []
    for fmap in features:
        fmap = fmap.float()
        _, _, h, w = fmap.shape
        win_h, win_w = max(1, round(window * h)), max(1, round(window * w))
        step_h, step_w = max(1, round(stride * h)), max(1, round(stride * w))
        stats = []
        for top in window_starts(h, win_h, step_h):
            for left in window_starts(w, win_w, step_w):
                cell = fmap[:, :, top : top + win_h, left : left + win_w].flatten(2)
                stats.append(torch.cat([cell.mean(-1), cell.std(-1, unbiased=False)], dim=1))
        per_stage.append(torch.stack(stats, dim=1))  # B x W x 2C
    counts = {s.shape[1] for s in per_stage}
    if len(counts) != 1:  # stage grids too small to hold the same windows
        raise ValueError(f"stages give different window counts {sorted(counts)}: the image is too small for this window")
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
