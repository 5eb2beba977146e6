"""MuSc's three steps as pure torch functions: LNAMD, mutual scoring (MSM) and RsCIN.

Shapes: ``N`` images, ``L = h * w`` patches per image, ``C`` channels.

- :func:`lnamd`: per image LayerNorm over (C, H, W) of one layer, mean over each
  ``r x r`` neighbourhood (stride 1, zero padding counted, as an unfold followed by
  a per-channel mean), bilinear resize to the common grid, L2 normalisation.
- :func:`mutual_scores`: each patch's minimum Euclidean distance to every OTHER
  image, then the mean of the lowest ``topmin`` fraction of those ``N - 1``
  distances. The ``N^2 L^2`` similarity matrix is never held at once: it is
  computed in blocks of ``a x b`` images that fit ``chunk_bytes``, and each block
  serves both directions (``i -> j`` and ``j -> i``), so every pair is computed once.
- :func:`rscin`: re-scores image scores by their most similar images (class
  embeddings), averaged over a k-list.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

_FLOAT_BYTES = 4


def lnamd(feature: "torch.Tensor", r: int, grid: tuple[int, int]) -> "torch.Tensor":
    """Local neighbourhood aggregation of one layer: ``B x C x H x W`` -> ``B x (h*w) x C`` unit vectors."""
    import torch.nn.functional as F

    x = feature.float()
    x = F.layer_norm(x, x.shape[1:])  # LayerNorm over (C, H, W) of each image, no affine
    if r > 1:
        x = F.avg_pool2d(x, kernel_size=r, stride=1, padding=(r - 1) // 2, count_include_pad=True)
    if tuple(x.shape[-2:]) != tuple(grid):
        x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
    x = x.flatten(2).transpose(1, 2)
    return F.normalize(x, dim=-1)


def block_size(num_patches: int, chunk_bytes: int) -> int:
    """Images per side of a block so that the ``(a L) x (a L)`` similarity block fits ``chunk_bytes``."""
    per_pair = _FLOAT_BYTES * num_patches * num_patches
    return max(1, int(math.isqrt(max(chunk_bytes // per_pair, 1))))


def mutual_scoring_bytes(num_images: int, num_patches: int, channels: int, chunk_bytes: int) -> int:
    """Peak working memory of :func:`mutual_scores` (features, the N x L x N minima, one block)."""
    a = min(block_size(num_patches, chunk_bytes), num_images)
    features = num_images * num_patches * channels * _FLOAT_BYTES
    minima = num_images * num_patches * num_images * _FLOAT_BYTES
    block = (a * num_patches) ** 2 * _FLOAT_BYTES
    reductions = 2 * a * num_patches * a * _FLOAT_BYTES
    return features + 2 * minima + block + reductions


def mutual_scores(
    z: "torch.Tensor",
    topmin: float = 0.3,
    chunk_bytes: int = 512 * 2**20,
    progress: Callable[[int], object] | None = None,
) -> "torch.Tensor":
    """Mutual scoring of ``N x L x C`` unit vectors: an ``N x L`` tensor of patch scores.

    For image ``i`` and patch ``p``: ``d_j = min_q ||z_ip - z_jq||`` for each other image
    ``j``; the score is the mean of the ``max(1, int((N - 1) * topmin))`` smallest ``d_j``.
    ``progress(n)`` is called after each block with the number of image pairs done.
    """
    import torch

    n, length, _ = z.shape
    if n < 2:
        raise ValueError(f"mutual scoring needs at least 2 images, got {n}")
    z = z.float()
    a = min(block_size(length, chunk_bytes), n)
    # best[i, p, j] = max_q <z_ip, z_jq>  (unit vectors: distance = sqrt(2 - 2 * similarity))
    best = torch.empty(n, length, n, dtype=torch.float32, device=z.device)
    for i0 in range(0, n, a):
        rows = z[i0 : i0 + a]
        ai = rows.shape[0]
        rows_flat = rows.reshape(ai * length, -1)
        for j0 in range(i0, n, a):
            cols = z[j0 : j0 + a]
            bj = cols.shape[0]
            sim = (rows_flat @ cols.reshape(bj * length, -1).T).view(ai, length, bj, length)
            best[i0 : i0 + ai, :, j0 : j0 + bj] = sim.amax(dim=3)
            if j0 != i0:
                best[j0 : j0 + bj, :, i0 : i0 + ai] = sim.amax(dim=1).permute(1, 2, 0)
            del sim
            if progress is not None:
                progress(ai * bj if j0 != i0 else ai * (ai + 1) // 2)
    dist = (2.0 - 2.0 * best).clamp_(min=0.0).sqrt_()
    del best
    eye = torch.arange(n, device=z.device)
    dist[eye, :, eye] = float("inf")  # an image is never compared with itself
    k = max(1, int((n - 1) * topmin))
    lowest = torch.topk(dist, k, dim=2, largest=False, sorted=False).values
    return lowest.mean(dim=2)


def num_pairs(n: int) -> int:
    """Image pairs (including each image with itself) that :func:`mutual_scores` computes."""
    return n * (n + 1) // 2


def rscin(scores: "torch.Tensor", embeddings: "torch.Tensor | None", k_list: Sequence[int]) -> "torch.Tensor":
    """Re-score image scores with their nearest images in embedding space (RsCIN).

    Scores are min-max normalised over the batch; ``W = E E^T`` of the L2-normalised
    embeddings; for each ``k`` each row keeps its ``k`` largest entries (itself
    included), is normalised to sum 1 and averages the scores; results are averaged
    over ``k_list``. Negative similarities are clipped to 0 (CLIP/DINO embeddings of
    one product never have any; CNN embeddings may). ``[]`` or a 0 in ``k_list``
    returns the scores unchanged, as in the reference.
    """
    import torch
    import torch.nn.functional as F

    if embeddings is None or not k_list or 0 in k_list:
        return scores
    s = scores.double()
    span = s.max() - s.min()
    s = (s - s.min()) / span if span > 0 else torch.zeros_like(s)
    e = F.normalize(embeddings.double(), dim=-1)
    w = (e @ e.T).clamp_(min=0.0)
    n = w.shape[0]
    out = []
    for k in k_list:
        k = min(int(k), n)
        idx = torch.topk(w, k, dim=1).indices
        kept = torch.zeros_like(w).scatter_(1, idx, 1.0) * w
        p = kept / kept.sum(dim=1, keepdim=True).clamp_(min=1e-12)
        out.append(p @ s)
    return torch.stack(out).mean(dim=0).to(scores.dtype)
