"""Greedy k-center coreset selection that never builds an N x N matrix.

PatchCore keeps a subset of the training patches that covers all of them: the
greedy k-center rule (Gonzalez) repeatedly adds the point farthest from the
points chosen so far. Distances are measured on a random Gaussian projection of
the features to ``projection_dim`` (128) dimensions, as in the paper.

The naive loop (as in anomalib) updates a running min-distance vector of all N
points after every pick: ``M`` matrix-vector passes over ``N x d`` floats, which is
memory-bound and what makes coreset selection crawl on a CPU with thousands of
images (the "exact" variant that builds an N x N matrix runs out of memory
instead). This implementation gives *the same picks* as the naive loop with the
same arithmetic done as cache-friendly matrix products:

- **lazy picks in blocks**: min-distances only shrink, so the running vector holds
  upper bounds. A block takes the ``pool`` points with the largest bounds, keeps
  their exact values current against the block's picks (a small ``pool x d``
  matrix-vector product per pick) and keeps picking while the best exact value is
  at least the largest bound outside the pool, which proves that it is the
  farthest point overall;
- **one refresh per block**: after up to ``block`` picks, every point's bound is
  refreshed against all of them at once (``chunk x d`` times ``d x block`` matrix
  products, ``|x|^2`` added after the row minimum).

Measured on 51,200 EfficientNet-Lite0 patch features (5,120 picks, 1 thread):
about 10x faster than the per-pick loop. The work is still ``N x M x d``: triangle
inequality pruning was tried and rules out almost nothing in 128 dimensions.

Memory: the projected points (``N x projection_dim`` float32), O(N) vectors, the
picked points and ``chunk x block`` scratch; never ``N x N`` nor ``N x M``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

#: Rows per chunk of distance computations (chunk x block floats of scratch, sized for the CPU cache).
DEFAULT_CHUNK = 4096


def projection_matrix(in_dim: int, out_dim: int, seed: int = 0) -> "torch.Tensor":
    """Seeded Gaussian random projection ``in_dim x out_dim`` (entries N(0, 1/out_dim))."""
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(in_dim, out_dim, generator=generator) / math.sqrt(out_dim)


def project(features: "np.ndarray | torch.Tensor", out_dim: int, seed: int = 0, chunk: int = DEFAULT_CHUNK) -> "torch.Tensor":
    """Random projection of ``N x D`` features to ``N x out_dim`` float32 (no-op when ``D <= out_dim`` or ``out_dim <= 0``)."""
    import torch

    x = torch.as_tensor(features)
    n, d = x.shape
    if out_dim <= 0 or d <= out_dim:
        return x.float().contiguous()
    matrix = projection_matrix(d, out_dim, seed)
    out = torch.empty(n, out_dim, dtype=torch.float32)
    for start in range(0, n, chunk):
        out[start : start + chunk] = x[start : start + chunk].float() @ matrix
    return out


def _sq_dist(x: "torch.Tensor", x_norm: "torch.Tensor", centers: "torch.Tensor", c_norm: "torch.Tensor") -> "torch.Tensor":
    """Squared distances ``len(x) x len(centers)`` via ``|x|^2 - 2 x.c + |c|^2`` (clamped at 0)."""
    import torch

    d = torch.addmm(c_norm[None, :], x, centers.T, beta=1.0, alpha=-2.0)
    d += x_norm[:, None]
    return d.clamp_(min=0.0)


def greedy_k_center(
    points: "torch.Tensor",
    size: int,
    start: int = 0,
    block: int = 128,
    pool: int = 1024,
    chunk: int = DEFAULT_CHUNK,
    progress: Callable[[int], object] | None = None,
) -> "torch.Tensor":
    """Indices of ``size`` points picked by greedy k-center (farthest-first), in pick order.

    Same picks as the naive loop (start at ``start``; repeatedly take the point with
    the largest squared distance to its nearest pick; exact ties aside) without any
    ``N x N`` or ``N x size`` matrix. ``points`` is ``N x d`` float32. ``progress(n)``
    is called with the number of new picks after the first pick and after each block.
    """
    import torch

    x = points.float().contiguous()
    n, dim = x.shape
    if not 0 < size <= n:
        raise ValueError(f"coreset size must be in 1..{n}, got {size}")
    if not 0 <= start < n:
        raise ValueError(f"start index {start} out of range for {n} points")
    x_norm = (x * x).sum(dim=1)
    picks = torch.empty(size, dtype=torch.long)
    centers = torch.empty(size, dim, dtype=torch.float32)  # picked points, contiguous
    centers_norm = torch.empty(size, dtype=torch.float32)
    min_dist = torch.empty(n, dtype=torch.float32)  # squared distance to the nearest pick (-inf: picked)
    picks[0], centers[0], centers_norm[0] = start, x[start], x_norm[start]
    for s in range(0, n, chunk):
        min_dist[s : s + chunk] = _sq_dist(x[s : s + chunk], x_norm[s : s + chunk], centers[:1], centers_norm[:1])[:, 0]
    min_dist[start] = -math.inf
    if progress is not None:
        progress(1)
    count = 1
    pool_size = max(pool, block)
    while count < size:
        # 1. lazy picks: exact values for the `k` largest upper bounds, kept current in-block
        k = min(pool_size, n)
        bounds, cand = torch.topk(min_dist, k, sorted=True)
        outside_bound = float(bounds[-1]) if k < n else -math.inf
        values = bounds.clone()
        xc, xc_norm = x[cand], x_norm[cand]
        first = count
        while count - first < block and count < size:
            j = int(torch.argmax(values))
            if float(values[j]) < outside_bound:  # a point outside the pool may be farther
                break
            c = int(cand[j])
            picks[count], centers[count], centers_norm[count] = c, x[c], x_norm[c]
            count += 1
            d = torch.mv(xc, x[c]).mul_(-2.0).add_(xc_norm).add_(x_norm[c])  # matrix-vector: fast
            torch.minimum(values, d.clamp_(min=0.0), out=values)
            values[j] = -math.inf
        # 2. refresh every point against the block's picks: one matrix product per chunk
        _refresh(x, x_norm, min_dist, centers[first:count], centers_norm[first:count], chunk)
        min_dist[picks[first:count]] = -math.inf
        if progress is not None:
            progress(count - first)
    return picks


def _refresh(
    x: "torch.Tensor",
    x_norm: "torch.Tensor",
    min_dist: "torch.Tensor",
    new: "torch.Tensor",
    new_norm: "torch.Tensor",
    chunk: int,
) -> None:
    """``min_dist = min(min_dist, squared distance to the new picks)``, in cache-sized chunks.

    ``|x|^2`` is constant per row, so it is added after the row minimum:
    ``min_c(|x|^2 - 2 x.c + |c|^2) = |x|^2 + min_c(|c|^2 - 2 x.c)``.
    """
    import torch

    scratch = torch.empty(min(chunk, x.shape[0]), new.shape[0], dtype=torch.float32)
    for s in range(0, x.shape[0], chunk):
        rows = slice(s, s + chunk)
        part = scratch[: min(chunk, x.shape[0] - s)]
        torch.addmm(new_norm[None, :], x[rows], new.T, beta=1.0, alpha=-2.0, out=part)
        best = part.min(dim=1).values
        best += x_norm[rows]
        torch.minimum(min_dist[rows], best.clamp_(min=0.0), out=min_dist[rows])


def coreset_size(n: int, ratio: float, max_size: int | None = None) -> int:
    """Number of points kept: ``ceil(ratio * n)``, at least 1, at most ``max_size`` and ``n``."""
    size = max(1, int(math.ceil(ratio * n - 1e-9)))
    if max_size is not None:
        size = min(size, int(max_size))
    return min(size, n)


def select_coreset(
    features: "np.ndarray | torch.Tensor",
    ratio: float = 0.1,
    projection_dim: int = 128,
    seed: int = 0,
    max_size: int | None = None,
    group_size: int | None = None,
    rows_per_image: int = 1,
    progress: Callable[[int, int], object] | None = None,
) -> "np.ndarray":
    """Sorted indices (int64) of the coreset of ``N x D`` features.

    ``ratio >= 1`` (or a coreset as large as the set) keeps every point. The
    projection and each start point are drawn with ``seed``.

    ``group_size`` bounds the cost on large training sets: the rows are split into
    consecutive groups of at most ``group_size`` rows (whole images: boundaries fall
    on multiples of ``rows_per_image``) and each group is reduced by the same ratio.
    The union still covers every patch (within the largest group's radius) while the
    work grows linearly with N instead of quadratically. None = one global selection.

    ``progress(done, total)`` is called as points are picked (``total``: the points picked
    over all groups), first with ``done = 0``.
    """
    import numpy as np
    import torch

    n = int(features.shape[0])
    size = coreset_size(n, ratio, max_size)
    if size >= n:
        return np.arange(n, dtype=np.int64)
    groups = [(0, n)]
    if group_size is not None and n > group_size:
        per_group = max(1, int(group_size) // max(1, rows_per_image)) * max(1, rows_per_image)
        count = -(-n // per_group)
        bounds = np.linspace(0, n // max(1, rows_per_image), count + 1).round().astype(int) * max(1, rows_per_image)
        bounds[-1] = n
        groups = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    # split `size` over the groups in proportion to their rows (largest remainder)
    lengths = np.array([b - a for a, b in groups], dtype=np.float64)
    quotas = size * lengths / n
    sizes = np.floor(quotas).astype(int)
    sizes[np.argsort(-(quotas - sizes), kind="stable")[: size - int(sizes.sum())]] += 1
    sizes = [int(min(b - a, max(1, k))) for (a, b), k in zip(groups, sizes)]
    total, done = sum(sizes), 0

    def picked(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    picked(0)
    picks = []
    for g, ((a, b), k) in enumerate(zip(groups, sizes)):
        points = project(features[a:b], projection_dim, seed)
        start = int(torch.randint(b - a, (1,), generator=torch.Generator().manual_seed(int(seed) + 1 + g)))
        picks.append(greedy_k_center(points, k, start=start, progress=picked).numpy() + a)
        del points
    return np.sort(np.concatenate(picks)).astype(np.int64)
