"""Greedy k-center coreset: same picks as the naive loop, far-apart picks, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from myriad_experts_patchcore.coreset import (
    coreset_size,
    greedy_k_center,
    project,
    projection_matrix,
    select_coreset,
)


def naive_greedy(points: np.ndarray, size: int, start: int) -> list[int]:
    """Textbook farthest-first traversal in float64 (one full pass per pick)."""
    x = points.astype(np.float64)
    picks = [start]
    min_dist = ((x - x[start]) ** 2).sum(axis=1)
    for _ in range(size - 1):
        c = int(np.argmax(min_dist))
        picks.append(c)
        min_dist = np.minimum(min_dist, ((x - x[c]) ** 2).sum(axis=1))
    return picks


@pytest.mark.parametrize(
    ("n", "d", "size", "block", "pool"),
    [
        (400, 3, 60, 1, 1),  # degenerate block and pool
        (1500, 8, 300, 4, 16),  # tiny pool: blocks end early all the time
        (3000, 5, 500, 7, 32),
        (1000, 16, 1000, 64, 256),  # every point picked
        (2500, 12, 400, 128, 1024),  # the defaults
    ],
)
def test_matches_exact_greedy_k_center(n: int, d: int, size: int, block: int, pool: int) -> None:
    points = np.random.default_rng(n + d).standard_normal((n, d)).astype(np.float32)
    picks = greedy_k_center(torch.from_numpy(points), size, start=5, block=block, pool=pool, chunk=333)
    assert picks.tolist() == naive_greedy(points, size, start=5)


def test_picks_one_point_per_far_cluster() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((12, 32)) * 100
    labels = rng.integers(0, 12, 6000)
    points = (centres[labels] + rng.standard_normal((6000, 32))).astype(np.float32)
    picks = greedy_k_center(torch.from_numpy(points), 12, start=0)
    assert sorted(set(labels[picks.numpy()].tolist())) == list(range(12))


def test_never_allocates_n_by_n() -> None:
    """20k x 64 points: no tensor created anywhere near N x N (400M floats) or N x M."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    LargestOutput.largest = max(LargestOutput.largest, t.numel())
            return out

    points = torch.from_numpy(np.random.default_rng(1).standard_normal((20_000, 64)).astype(np.float32))
    with LargestOutput():
        picks = greedy_k_center(points, 1_000, start=0)
    assert len(set(picks.tolist())) == 1_000
    # the largest tensors are the points themselves and the picked points (N x d, M x d)
    assert LargestOutput.largest <= 20_000 * 64, LargestOutput.largest


def test_twenty_thousand_points_give_distinct_picks() -> None:
    """20k points, 2k picks: all distinct (its time is a benchmark's to measure, not a test's)."""
    points = torch.from_numpy(np.random.default_rng(1).standard_normal((20_000, 64)).astype(np.float32))
    picks = greedy_k_center(points, 2_000, start=0)
    assert len(set(picks.tolist())) == 2_000


def test_select_coreset_sizes_groups_and_seed() -> None:
    features = np.random.default_rng(2).standard_normal((5_000, 200)).astype(np.float32)
    keep = select_coreset(features, ratio=0.1, projection_dim=128, seed=3)
    assert len(keep) == 500 and (np.diff(keep) > 0).all()
    assert np.array_equal(keep, select_coreset(features, ratio=0.1, projection_dim=128, seed=3))
    assert not np.array_equal(keep, select_coreset(features, ratio=0.1, projection_dim=128, seed=4))
    # grouped: 5 groups of 20 whole "images" of 50 rows, each reduced by the same ratio
    grouped = select_coreset(features, ratio=0.1, group_size=1_200, rows_per_image=50)
    assert len(grouped) == 500 and len(set(grouped.tolist())) == 500
    assert np.histogram(grouped, bins=[0, 1000, 2000, 3000, 4000, 5000])[0].tolist() == [100] * 5
    assert len(select_coreset(features, ratio=0.1, max_size=77, group_size=1_200, rows_per_image=50)) == 77
    assert np.array_equal(select_coreset(features, ratio=1.0), np.arange(5_000))


def test_coreset_size_and_projection() -> None:
    assert coreset_size(1000, 0.1) == 100
    assert coreset_size(5, 0.1) == 1
    assert coreset_size(1000, 0.1, max_size=7) == 7
    matrix = projection_matrix(300, 128, seed=0)
    assert matrix.shape == (300, 128) and torch.equal(matrix, projection_matrix(300, 128, seed=0))
    x = np.ones((10, 300), dtype=np.float16)
    assert project(x, 128).shape == (10, 128) and project(x, 128).dtype == torch.float32
    assert project(x[:, :100], 128).shape == (10, 100)  # already small: no projection


def test_invalid_sizes_raise() -> None:
    points = torch.zeros(10, 3)
    with pytest.raises(ValueError):
        greedy_k_center(points, 11)
    with pytest.raises(ValueError):
        greedy_k_center(points, 2, start=10)
