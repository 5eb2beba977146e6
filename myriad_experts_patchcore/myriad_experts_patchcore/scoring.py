"""From nearest-neighbour distances to anomaly maps and image scores (pure functions).

- patch score: mean of the k nearest bank distances (k = 1 by default);
- image score: the largest patch score (after :func:`gaussian_blur` of the patch grid when the
  expert's ``score_sigma`` is above 0), optionally reweighted as in the paper
  (:func:`reweight_factors`);
- map: patch scores bilinearly upsampled to the network input size and smoothed
  with a Gaussian (sigma 4 pixels at that resolution), then resized to each
  image's own size.

All three map steps are linear and separable, so :func:`map_operator` composes
them into one ``out x h`` matrix per axis and a map is ``A_y @ scores @ A_x.T``:
two small matrix products per image instead of a 256 x 256 upsample, a 33-tap
blur and a resize (same result up to float rounding).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> "torch.Tensor":
    """Normalised 1-D Gaussian taps, radius ``int(truncate * sigma + 0.5)`` (as scipy.ndimage)."""
    import torch

    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return (kernel / kernel.sum()).float()


def _symmetric_pad(x: "torch.Tensor", radius: int, dim: int) -> "torch.Tensor":
    """Pad by mirroring including the edge sample (scipy's ``reflect``: d c b a | a b c d)."""
    import torch

    n = x.shape[dim]
    if radius <= n:
        left = x.narrow(dim, 0, radius).flip(dim)
        right = x.narrow(dim, n - radius, radius).flip(dim)
        return torch.cat([left, x, right], dim=dim)
    # radius longer than the signal: index arithmetic of the periodic symmetric extension
    idx = torch.arange(-radius, n + radius) % (2 * n)
    idx = torch.where(idx >= n, 2 * n - 1 - idx, idx)
    return x.index_select(dim, idx.to(x.device))


def gaussian_blur(maps: "torch.Tensor", sigma: float, truncate: float = 4.0) -> "torch.Tensor":
    """Separable Gaussian blur of a ``B x H x W`` batch (matches ``scipy.ndimage.gaussian_filter``).

    Two 1-D convolutions on the whole batch: ``2 (2r + 1)`` multiply-adds per pixel
    instead of ``(2r + 1)^2``.
    """
    import torch.nn.functional as F

    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma, truncate).to(maps.device, maps.dtype)
    radius = (kernel.numel() - 1) // 2
    x = maps[:, None]
    x = F.conv2d(_symmetric_pad(x, radius, 3), kernel.view(1, 1, 1, -1))
    x = F.conv2d(_symmetric_pad(x, radius, 2), kernel.view(1, 1, -1, 1))
    return x[:, 0]


def patch_scores(sq_distances: "np.ndarray", distance: str = "squared") -> "np.ndarray":
    """Mean over the k nearest distances (``Q x k`` squared L2 in, ``Q`` out)."""
    import numpy as np

    d = sq_distances if distance == "squared" else np.sqrt(sq_distances)
    return d.mean(axis=1) if d.shape[1] > 1 else d[:, 0].copy()


def reweight_factors(test_features: "np.ndarray", support: "np.ndarray") -> "np.ndarray":
    """Paper reweighting ``w = 1 - softmax(||m_test - n_i||)[0]`` per image.

    ``test_features`` (``B x D``) is each image's worst patch ``m_test``; ``support``
    (``B x b x D``) holds, per image, the ``b`` bank vectors nearest to that patch's
    nearest bank entry ``m*``, ``m*`` itself first. Distances are plain Euclidean,
    as in anomalib. ``w`` is close to 1 when ``m*`` sits in a sparse region of the
    bank (the patch is far from all of it) and smaller when ``m*`` has close
    neighbours that the test patch is about as near to.
    """
    import numpy as np

    diff = support.astype(np.float64) - test_features.astype(np.float64)[:, None, :]
    dist = np.sqrt((diff * diff).sum(axis=2))  # B x b
    shifted = dist - dist.max(axis=1, keepdims=True)
    soft = np.exp(shifted)
    soft /= soft.sum(axis=1, keepdims=True)
    return (1.0 - soft[:, 0]).astype(np.float32)


def upsample_and_blur(grids: "torch.Tensor", size: int, sigma: float) -> "torch.Tensor":
    """``B x h x w`` patch scores -> ``B x size x size`` blurred maps."""
    import torch.nn.functional as F

    maps = F.interpolate(grids[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return gaussian_blur(maps, sigma)



@lru_cache(maxsize=64)
def map_operator(grid: int, size: int, sigma: float, out: int) -> "torch.Tensor":
    """``out x grid`` float32 matrix: bilinear ``grid -> size``, Gaussian blur at ``size``, bilinear ``size -> out``."""
    import torch
    import torch.nn.functional as F

    eye = torch.eye(grid, dtype=torch.float64)[None]  # 1 x grid (channels) x grid (length)
    op = F.interpolate(eye, size=size, mode="linear", align_corners=False)[0].T  # size x grid
    if sigma > 0:
        kernel = gaussian_kernel1d(sigma).double()
        radius = (kernel.numel() - 1) // 2
        padded = _symmetric_pad(op.T[:, None, :], radius, 2)  # grid x 1 x (size + 2r)
        op = F.conv1d(padded, kernel.view(1, 1, -1))[:, 0].T  # size x grid
    if out != size:
        op = F.interpolate(op.T[None], size=out, mode="linear", align_corners=False)[0].T  # out x grid
    return op.float().contiguous()


def anomaly_maps(scores: "torch.Tensor", shapes: Sequence[tuple[int, int]], size: int, sigma: float) -> list["np.ndarray"]:
    """``B x h x w`` patch scores -> one float32 map per image, at ``shapes[i]`` (H, W).

    Equal to bilinear upsampling to ``size x size``, :func:`gaussian_blur` with
    ``sigma`` and bilinear resizing to ``(H, W)``, done as ``A_y @ s @ A_x.T``.
    """
    import numpy as np

    h, w = int(scores.shape[1]), int(scores.shape[2])
    maps = []
    for grid, (height, width) in zip(scores.float(), shapes):
        rows = map_operator(h, size, float(sigma), int(height))
        cols = map_operator(w, size, float(sigma), int(width))
        maps.append(np.ascontiguousarray((rows @ grid @ cols.T).numpy(), dtype=np.float32))
    return maps
