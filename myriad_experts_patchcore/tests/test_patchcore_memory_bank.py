"""Memory bank search against brute force, dtypes, index kinds, errors."""

from __future__ import annotations

import numpy as np
import pytest

from myriad.errors import ConfigError, MyriadError
from myriad_experts_patchcore.memory_bank import MemoryBank, faiss_has_gpu
from myriad_experts_patchcore.scoring import patch_scores


def brute_force(bank: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = ((queries[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(axis=2)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order


@pytest.mark.parametrize("k", [1, 3])
def test_flat_search_equals_brute_force(k: int) -> None:
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((700, 48)).astype(np.float32)
    queries = rng.standard_normal((300, 48)).astype(np.float32)
    distances, indices = MemoryBank(bank).search(queries, k)
    expected_d, expected_i = brute_force(bank, queries, k)
    assert distances.dtype == np.float32 and indices.dtype == np.int64
    np.testing.assert_allclose(distances, expected_d, rtol=1e-4, atol=1e-4)  # squared L2, as FAISS
    assert (indices == expected_i).mean() > 0.999  # ties aside
    np.testing.assert_allclose(patch_scores(distances, "squared"), expected_d.mean(axis=1), rtol=1e-4)
    np.testing.assert_allclose(patch_scores(distances, "euclidean"), np.sqrt(expected_d).mean(axis=1), rtol=1e-4)


def test_float16_bank_is_close_and_half_the_size() -> None:
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((500, 32)).astype(np.float32)
    queries = rng.standard_normal((50, 32)).astype(np.float32)
    half = MemoryBank(bank, dtype="float16")
    assert half.features.dtype == np.float16 and half.features.nbytes == bank.nbytes // 2
    d16, _ = half.search(queries, 1)
    d32, _ = MemoryBank(bank).search(queries, 1)
    np.testing.assert_allclose(d16, d32, rtol=1e-2)


def test_ivfpq_falls_back_to_flat_on_small_banks() -> None:
    bank = np.random.default_rng(2).standard_normal((300, 16)).astype(np.float32)
    with pytest.warns(UserWarning, match="ivfpq"):
        mb = MemoryBank(bank, index="ivfpq")
    assert mb.kind == "flat"


def test_ivfpq_on_a_large_bank_finds_near_neighbours() -> None:
    rng = np.random.default_rng(3)
    bank = rng.standard_normal((10_000, 16)).astype(np.float32)
    queries = bank[:200] + 0.01 * rng.standard_normal((200, 16)).astype(np.float32)
    mb = MemoryBank(bank, index="ivfpq", ivf_lists=32, pq_subquantizers=2, ivf_probe=8)  # small: PQ training is slow
    assert mb.kind == "ivfpq"
    _, indices = mb.search(queries, 1)
    assert (indices[:, 0] == np.arange(200)).mean() > 0.8


def test_errors_name_the_problem() -> None:
    bank = np.zeros((5, 4), dtype=np.float32)
    with pytest.raises(ConfigError, match="num_neighbors=6"):
        MemoryBank(bank).search(np.zeros((1, 4), dtype=np.float32), 6)
    with pytest.raises(MyriadError, match="Q x 4"):
        MemoryBank(bank).search(np.zeros((1, 5), dtype=np.float32), 1)
    with pytest.raises(MyriadError, match="NaN"):
        MemoryBank(np.full((3, 4), np.nan, dtype=np.float32))
    with pytest.raises(MyriadError, match="non-empty"):
        MemoryBank(np.zeros((0, 4), dtype=np.float32))


@pytest.mark.skipif(not faiss_has_gpu(), reason="faiss without GPU support or no GPU")
def test_gpu_flat_index_matches_cpu() -> None:  # pragma: no cover - needs faiss-gpu
    rng = np.random.default_rng(4)
    bank = rng.standard_normal((1000, 64)).astype(np.float32)
    queries = rng.standard_normal((100, 64)).astype(np.float32)
    d_gpu, i_gpu = MemoryBank(bank, use_gpu=True).search(queries, 1)
    d_cpu, i_cpu = MemoryBank(bank).search(queries, 1)
    np.testing.assert_allclose(d_gpu, d_cpu, rtol=1e-3)


def test_upper_bounds_never_fall_below_the_exact_distances() -> None:
    rng = np.random.default_rng(0)
    bank = MemoryBank(rng.standard_normal((5000, 16)).astype(np.float32))
    queries = rng.standard_normal((300, 16)).astype(np.float32)
    exact, _ = bank.search(queries, 1)
    upper = bank.search_upper(queries)
    assert upper is not None and upper.shape == (300,)
    assert (upper >= exact[:, 0] * (1 - 1e-5)).all() and np.mean(np.isclose(upper, exact[:, 0], rtol=1e-4)) > 0.25
    assert MemoryBank(rng.standard_normal((1000, 16)).astype(np.float32)).search_upper(queries) is None  # small bank
    assert MemoryBank(rng.standard_normal((5000, 16)).astype(np.float32), dtype="float16").search_upper(queries) is None
