"""Pure compute of the texture-wide expert: window statistics, Gaussian models, standardised distances.

A texture-wide defect (the weave a few percent denser, slightly blurred or noisier,
rotated) changes little at any one place but shifts the *distribution* of the
image's responses. Two groups of statistics summarise a window:

- ``cnn``: per stage of the frozen backbone, the per-channel mean and standard
  deviation of the feature map (:func:`window_statistics`);
- ``energy``: at native resolution and on a 2x pyramid, the mean, median and 90th
  percentile of the absolute second-difference response (Immerkaer's noise operator)
  and the mean squared gradients along x and y and their product, in log, for the
  luma and a colour-opponent channel (:func:`energy_statistics`). Sensor noise,
  sharpness, grain and orientation show here first; a CNN's stride-2 stem averages
  part of it away;
- ``spectrum`` (optional): the luma's power spectrum at native resolution, as shares of
  the power in :data:`SPECTRUM_BANDS` log-spaced rings of spatial frequency and in
  :data:`SPECTRUM_SECTORS` orientation sectors, in log (:func:`spectrum_statistics`). A
  weave or grain a few percent denser or coarser moves power between rings; a rotation
  moves it between sectors; shares ignore a change of overall contrast.

Each group is modelled by one Gaussian fitted on normal windows (mean, Ledoit-Wolf
shrunk covariance). A window's Mahalanobis distance to a group is standardised by the
distances of held-out normal images (:func:`heldout_null`), so the groups share a
scale, and the window's score is the mean of its groups' standardised distances.
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


#: Pyramid levels of :func:`energy_statistics` (native resolution, then halved each time).
ENERGY_LEVELS = 5
#: BT.601 luma and a red-blue opponent channel: the two planes the energy statistics read.
_PLANES = ((0.299, 0.587, 0.114), (0.5, 0.0, -0.5))


def energy_statistics(batch: "torch.Tensor", window: float, stride: float, levels: int = ENERGY_LEVELS) -> "torch.Tensor":
    """Log texture-energy statistics per window of RGB images in [0, 255]: ``B x W x E`` (float32).

    ``batch`` is ``B x 3 x H x W`` at native resolution. Per plane and pyramid level:
    log mean / median / 90th percentile of ``|second difference|`` (3 x 3 kernel
    ``[1,-2,1] x [1,-2,1]``), log mean of ``gx^2``, ``gy^2`` and ``|gx gy|``; and per plane
    the log standard deviation. ``E = planes * (6 * levels + 1)``.
    """
    import torch
    import torch.nn.functional as F

    x = batch.float()
    weights = torch.tensor(_PLANES, dtype=x.dtype, device=x.device)
    planes = torch.einsum("pc,bchw->bphw", weights, x)
    b, p = planes.shape[:2]
    kernel = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], device=x.device)
    starts = window_fractions(window, stride)
    eps = 1e-6
    per_level: list[torch.Tensor] = []
    current = planes
    for _ in range(levels):
        h, w = current.shape[-2:]
        if min(h, w) < 4:
            raise ValueError(f"a {h} x {w} pyramid level is too small for the energy statistics")
        flat = current.reshape(b * p, 1, h, w)
        lap = F.conv2d(flat, kernel[None, None]).abs().reshape(b, p, h - 2, w - 2)
        gx = (current[..., :, 1:] - current[..., :, :-1])[..., :-1, :]
        gy = (current[..., 1:, :] - current[..., :-1, :])[..., :, :-1]
        stats = []
        for top_start in starts:
            for left_start in starts:
                t, bt = _cells(top_start, window, h - 2)
                lft, rt = _cells(left_start, window, w - 2)
                cell = lap[..., t:bt, lft:rt].flatten(2)
                q = torch.quantile(cell, torch.tensor([0.5, 0.9], device=x.device), dim=-1)  # 2 x B x P
                t2, b2 = _cells(top_start, window, h - 1)
                l2, r2 = _cells(left_start, window, w - 1)
                cx, cy = gx[..., t2:b2, l2:r2], gy[..., t2:b2, l2:r2]
                values = [cell.mean(-1), q[0], q[1], (cx * cx).mean((-2, -1)), (cy * cy).mean((-2, -1)), (cx * cy).abs().mean((-2, -1))]
                stats.append(torch.log(torch.stack(values, dim=-1) + eps).flatten(1))  # B x (P*6)
        per_level.append(torch.stack(stats, dim=1))
        current = F.avg_pool2d(current, 2)
    spread = []
    for top_start in starts:
        for left_start in starts:
            t, bt = _cells(top_start, window, planes.shape[-2])
            lft, rt = _cells(left_start, window, planes.shape[-1])
            spread.append(torch.log(planes[..., t:bt, lft:rt].flatten(2).std(-1) + eps))
    per_level.append(torch.stack(spread, dim=1))
    return torch.cat(per_level, dim=2)


#: Log-spaced rings of spatial frequency of :func:`spectrum_statistics`, from 2 cycles per window to Nyquist.
SPECTRUM_BANDS = 16
#: Orientation sectors (over 180 degrees) of :func:`spectrum_statistics`.
SPECTRUM_SECTORS = 8


def spectrum_statistics(
    batch: "torch.Tensor", window: float, stride: float, bands: int = SPECTRUM_BANDS, sectors: int = SPECTRUM_SECTORS
) -> "torch.Tensor":
    """Log shares of the luma's power per frequency ring and per orientation sector, per window: ``B x W x (bands + sectors)``.

    ``batch`` is ``B x 3 x H x W`` RGB in [0, 255] at native resolution. Each window is
    mean-removed and Hann-tapered before its 2-D FFT; the DC term is left out; ring edges
    are log-spaced from 2 cycles per window to 0.5 cycles per pixel.
    """
    import torch

    x = batch.float()
    luma = torch.einsum("c,bchw->bhw", torch.tensor(_PLANES[0], dtype=x.dtype, device=x.device), x)
    h, w = luma.shape[-2:]
    starts = window_fractions(window, stride)
    out = []
    for top_start in starts:
        t, bt = _cells(top_start, window, h)
        for left_start in starts:
            lft, rt = _cells(left_start, window, w)
            cell = luma[:, t:bt, lft:rt]
            ch, cw = cell.shape[-2:]
            if min(ch, cw) < 16:
                raise ValueError(f"a {ch} x {cw} window is too small for the spectrum statistics")
            cell = cell - cell.mean((-2, -1), keepdim=True)
            taper = torch.hann_window(ch, periodic=False, device=x.device)[:, None] * torch.hann_window(cw, periodic=False, device=x.device)[None, :]
            power = torch.fft.rfft2(cell * taper).abs() ** 2  # B x ch x (cw // 2 + 1)
            fy, fx = torch.broadcast_tensors(
                torch.fft.fftfreq(ch, device=x.device)[:, None], torch.fft.rfftfreq(cw, device=x.device)[None, :]
            )
            radius = torch.sqrt(fy**2 + fx**2)
            angle = torch.remainder(torch.atan2(fy, fx), math.pi)
            lowest = 2.0 / min(ch, cw)
            edges = torch.logspace(math.log10(lowest), math.log10(0.5), bands + 1, device=x.device)
            valid = radius >= lowest
            ring = torch.bucketize(radius, edges).clamp(1, bands) - 1
            sector = (angle / math.pi * sectors).long().clamp(max=sectors - 1)
            flat = power.flatten(1)[:, valid.flatten()]
            total = flat.sum(-1, keepdim=True) + 1e-12
            ring_ids, sector_ids = ring.flatten()[valid.flatten()], sector.flatten()[valid.flatten()]
            ring_power = torch.zeros(flat.shape[0], bands, device=x.device).index_add_(1, ring_ids, flat)
            sector_power = torch.zeros(flat.shape[0], sectors, device=x.device).index_add_(1, sector_ids, flat)
            shares = torch.cat([ring_power, sector_power], dim=1) / total
            out.append(torch.log(shares + 1e-9))
    return torch.stack(out, dim=1)


def image_folds(num_images: int, folds: int = 5) -> list["np.ndarray"]:
    """Image indices in ``min(folds, num_images)`` interleaved groups (deterministic)."""
    import numpy as np

    count = max(1, min(folds, num_images))
    return [np.arange(k, num_images, count) for k in range(count)]


def heldout_distances(samples: "np.ndarray", shrinkage: float | None = None, folds: int = 5) -> "np.ndarray | None":
    """``N x W`` held-out distances of ``N x W x D`` window samples, or None where no fold can be held out.

    Images are split into folds (:func:`image_folds`); each fold's windows are scored by a
    Gaussian fitted on the other folds' windows. With ``N <= folds`` every image is its own
    fold (leave-one-out). None when a fold would leave fewer than 2 windows to fit on (one
    image, or two whole-image windows).
    """
    import numpy as np

    n, windows, dim = samples.shape
    if n < 2 or (n - len(image_folds(n, folds)[0])) * windows < 2:
        return None
    out = np.zeros((n, windows), dtype=np.float64)
    for held in image_folds(n, folds):  # the first fold is the largest: every other leaves as many windows or more
        rest = np.setdiff1d(np.arange(n), held)
        model = GaussianModel.fit(samples[rest].reshape(-1, dim), shrinkage)
        out[held] = model.distances(samples[held].reshape(-1, dim)).reshape(len(held), windows)
    return out


def heldout_null(samples: "np.ndarray", distances: "np.ndarray | None", shrinkage: float | None = None) -> tuple[float, float]:
    """Mean and standard deviation of held-out normal distances for ``N x W x D`` window samples.

    ``distances``: their :func:`heldout_distances`. Where none could be held out (None), all
    windows score against a Gaussian of all of them (biased low, but it keeps every group on
    a comparable scale).
    """
    import numpy as np

    if distances is None:
        dim = samples.shape[-1]
        distances = GaussianModel.fit(samples.reshape(-1, dim), shrinkage).distances(samples.reshape(-1, dim))
    values = np.asarray(distances).reshape(-1)
    return float(values.mean()), float(max(values.std(), 1e-6 * max(abs(values.mean()), 1.0)))


def _principal_axes(centred: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
    """Eigenvalues (descending) and unit eigenvectors (rows) of the covariance of centred samples.

    From the smaller of the ``N x N`` Gram matrix and the ``D x D`` scatter matrix
    (symmetric eigensolvers; much faster here than an SVD of the ``N x D`` samples).
    """
    import numpy as np

    n, dim = centred.shape
    if n <= dim:
        values, vectors = np.linalg.eigh(centred @ centred.T)
        values = np.maximum(values[::-1], 0.0)
        vectors = vectors[:, ::-1]
        keep = values > 1e-12 * max(float(values[0]), 1e-300)
        axes = (centred.T @ vectors[:, keep]) / np.sqrt(values[keep])
        return values[keep] / n, axes.T
    values, vectors = np.linalg.eigh(centred.T @ centred)
    return np.maximum(values[::-1], 0.0) / n, vectors[:, ::-1].T


def ledoit_wolf_shrinkage(centred: "np.ndarray") -> float:
    """The Ledoit-Wolf shrinkage of centred ``N x D`` samples towards a scaled identity.

    The estimate of Ledoit & Wolf (2004) as scikit-learn computes it, written with the
    ``N x N`` Gram matrix so that it costs ``O(N^2 D)`` instead of ``O(N D^2)``.
    """
    import numpy as np

    n, dim = centred.shape
    squared_norms = (centred**2).sum(axis=1)
    trace = float(squared_norms.sum()) / n  # trace of the sample covariance
    mu = trace / dim
    gram = centred @ centred.T
    frobenius = float((gram**2).sum()) / n**2  # ||S||_F^2
    beta = (float((squared_norms**2).sum()) / n - frobenius) / (dim * n)
    delta = (frobenius - 2.0 * mu * trace + dim * mu**2) / dim
    beta = min(beta, delta)
    return 0.0 if beta <= 0.0 or delta <= 0.0 else float(beta / delta)


@dataclass
class GaussianModel:
    """A Gaussian over statistic vectors with a shrunk covariance, kept in its eigenbasis (float64).

    The covariance is ``(1 - shrinkage) * S + shrinkage * m * I`` (``S`` the sample
    covariance, ``m`` its mean eigenvalue), plus a tiny floor: ``components`` (``r x D``)
    and ``variances`` (``r``) are its eigenvectors and eigenvalues on the span of the
    samples, and every other direction has variance ``isotropic``. So the Mahalanobis
    distance costs ``O(r D)`` per vector and fitting ``O(N^2 D)``, never a ``D x D`` inverse.
    """

    mean: "np.ndarray"
    components: "np.ndarray"
    variances: "np.ndarray"
    isotropic: float
    shrinkage: float
    samples: int

    @classmethod
    def fit(cls, samples: "np.ndarray", shrinkage: float | None = None) -> "GaussianModel":
        """Fit on ``N x D`` samples; covariance shrunk towards a scaled identity (Ledoit-Wolf when None)."""
        import numpy as np

        x = np.asarray(samples, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"the Gaussian model needs at least 2 sample vectors, got shape {x.shape}")
        n, dim = x.shape
        mean = x.mean(axis=0)
        centred = x - mean
        if shrinkage is None:
            shrinkage = ledoit_wolf_shrinkage(centred)
        eigen, vt = _principal_axes(centred)
        scale = float(eigen.sum()) / dim
        # a small floor keeps every variance positive when features are constant (e.g. one reference image)
        isotropic = shrinkage * scale + 1e-6 * max(scale, 1e-12)
        keep = eigen > 1e-12 * max(float(eigen.max(initial=0.0)), 1e-300)
        return cls(
            mean=mean,
            components=vt[keep],
            variances=(1.0 - shrinkage) * eigen[keep] + isotropic,
            isotropic=float(isotropic),
            shrinkage=float(shrinkage),
            samples=n,
        )

    def distances(self, samples: "np.ndarray") -> "np.ndarray":
        """Mahalanobis distance of each row of ``N x D`` samples (float64)."""
        import numpy as np

        centred = np.asarray(samples, dtype=np.float64) - self.mean
        projected = centred @ self.components.T
        inside = (projected**2 / self.variances).sum(axis=1)
        outside = np.maximum((centred**2).sum(axis=1) - (projected**2).sum(axis=1), 0.0) / self.isotropic
        return np.sqrt(inside + outside)
