"""MuSc's compute steps against brute-force definitions (LNAMD, chunked mutual scoring, RsCIN)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from myriad_experts_musc.scoring import (
    columns_per_chunk,
    lnamd,
    mutual_scores,
    mutual_scoring_bytes,
    num_pairs,
    pair_plan,
    rscin,
)


def test_lnamd_is_layernorm_unfold_mean_normalise() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 6)
    got = lnamd(x, 3, (6, 6))
    # definition: LayerNorm over (C, H, W), 3x3 unfold with zero padding, per-channel mean, L2 norm
    normed = torch.nn.LayerNorm([5, 6, 6], elementwise_affine=False)(x)
    cols = F.unfold(normed, kernel_size=3, padding=1).view(2, 5, 9, 36)
    want = F.normalize(cols.mean(dim=2).transpose(1, 2), dim=-1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got.shape == (2, 36, 5)


def test_lnamd_resizes_deeper_layers_to_the_common_grid() -> None:
    x = torch.randn(3, 4, 4, 4)
    out = lnamd(x, 1, (8, 8))
    assert out.shape == (3, 64, 4)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3, 64))


def brute_force_msm(z: torch.Tensor, topmin: float, references: dict[int, list[int]] | None = None) -> torch.Tensor:
    """The definition: per patch, min distance to each reference image, mean of the lowest ``topmin`` fraction."""
    n = z.shape[0]
    out = []
    for i in range(n):
        others = [j for j in range(n) if j != i] if references is None else references[i]
        per_image = torch.stack([torch.cdist(z[i], z[j]).min(dim=1).values for j in others], dim=1)
        k = max(1, int(len(others) * topmin))
        out.append(per_image.sort(dim=1).values[:, :k].mean(dim=1))
    return torch.stack(out)


def references_of(n: int, references: int, seed: int) -> dict[int, list[int]]:
    """Each image's reference images according to :func:`pair_plan` (both directions of every pair)."""
    partners, _, _, _ = pair_plan(n, references, seed)
    refs: dict[int, list[int]] = {i: [] for i in range(n)}
    for p in range(n):
        for q in partners[p].tolist():
            refs[p].append(q)
            refs[q].append(p)
    return refs


# chunk sizes: one partner per matmul, three per matmul, everything at once
CHUNKS = [1, 4 * 7 * 7 * 3, 2**30]


@pytest.mark.parametrize("chunk_bytes", CHUNKS)
@pytest.mark.parametrize("topmin", [0.3, 1.0])
def test_chunked_mutual_scoring_matches_brute_force(chunk_bytes: int, topmin: float) -> None:
    torch.manual_seed(1)
    z = F.normalize(torch.randn(7, 7, 4), dim=-1)
    got = mutual_scores(z, topmin=topmin, chunk_bytes=chunk_bytes)
    torch.testing.assert_close(got, brute_force_msm(z, topmin), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk_bytes", CHUNKS)
@pytest.mark.parametrize("references", [2, 3, 4])
def test_reference_subsets_match_brute_force_on_the_same_references(chunk_bytes: int, references: int) -> None:
    torch.manual_seed(2)
    z = F.normalize(torch.randn(9, 7, 4), dim=-1)
    got = mutual_scores(z, 0.5, chunk_bytes, references=references, seed=5)
    want = brute_force_msm(z, 0.5, references_of(9, references, 5))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    unchunked = mutual_scores(z, 0.5, 2**30, references=references, seed=5)
    torch.testing.assert_close(got, unchunked, rtol=1e-6, atol=1e-6)


def test_reference_plan_is_a_seeded_symmetric_subset() -> None:
    refs = references_of(20, 6, seed=3)
    for image, others in refs.items():
        assert len(others) == len(set(others)) == 6 and image not in others
        assert all(image in refs[j] for j in others)  # every pair serves both of its images
    assert refs == references_of(20, 6, seed=3)  # deterministic per seed
    assert refs != references_of(20, 6, seed=4)
    assert references_of(20, 5, seed=3) == refs  # odd counts round up to even
    assert num_pairs(20, 6) == 20 * 3 and num_pairs(20) == 190 and num_pairs(20, 19) == 190


def test_reference_subsets_are_deterministic_per_seed() -> None:
    z = F.normalize(torch.randn(12, 5, 3), dim=-1)
    a = mutual_scores(z, references=4, seed=0)
    assert torch.equal(a, mutual_scores(z, references=4, seed=0))
    assert not torch.equal(a, mutual_scores(z, references=4, seed=1))


def test_references_covering_the_batch_are_the_exact_scoring() -> None:
    z = F.normalize(torch.randn(6, 5, 3), dim=-1)
    exact = mutual_scores(z)
    for references in (5, 6, 100):  # 2 * ceil(R / 2) >= N - 1: every other image
        assert torch.equal(mutual_scores(z, references=references, seed=3), exact)
    assert not torch.equal(mutual_scores(z, references=4, seed=3), exact)  # 4 < N - 1: a subset
    with pytest.raises(ValueError, match="references"):
        mutual_scores(z, references=0)


def test_mutual_scoring_reports_progress_over_all_pairs() -> None:
    z = F.normalize(torch.randn(5, 4, 3), dim=-1)
    done: list[int] = []
    mutual_scores(z, chunk_bytes=4 * 4 * 4 * 2, progress=done.append)  # 2 partners per matmul
    assert sum(done) == num_pairs(5) == 10 and max(done) == 2
    done.clear()
    mutual_scores(F.normalize(torch.randn(11, 4, 3), dim=-1), references=4, progress=done.append)
    assert sum(done) == num_pairs(11, 4) == 22


def test_mutual_scoring_needs_two_images() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        mutual_scores(torch.ones(1, 4, 3))
    two = mutual_scores(F.normalize(torch.randn(2, 4, 3), dim=-1))  # k = max(1, int(0.3)) = 1
    assert torch.isfinite(two).all()


def test_memory_bound_for_200_images_of_37x37_tokens() -> None:
    # ViT-L-14-336 at 518 px: 1369 tokens of 1024 channels; the default 512 MB chunks.
    chunk = 512 * 2**20
    c = columns_per_chunk(1369, chunk)
    assert 1369 * c * 1369 * 4 <= chunk
    assert mutual_scoring_bytes(200, 1369, 1024, chunk) < 3 * 2**30  # the whole step, far below 8 GB
    assert columns_per_chunk(1369, 1) == 1  # never zero


def test_memory_bound_for_a_316_image_category() -> None:
    # 300 test images + 16 controls on the embedded CNN's 40 x 40 grid (stage 3: 112 channels)
    chunk = 512 * 2**20
    exact = mutual_scoring_bytes(316, 1600, 112, chunk)
    subset = mutual_scoring_bytes(316, 1600, 112, chunk, references=32)
    assert exact < 2 * 2**30 and subset < 1 * 2**30  # the 512 MB similarity chunk is most of the subset's


def test_rscin() -> None:
    scores = torch.tensor([0.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    torch.testing.assert_close(rscin(scores, emb, [1]), scores / 4)  # k = 1: itself, min-max normalised
    assert torch.equal(rscin(scores, emb, []), scores)
    assert torch.equal(rscin(scores, emb, [0]), scores)
    assert torch.equal(rscin(scores, None, [1, 2]), scores)
    k2 = rscin(scores, emb, [2])  # each image averaged with its nearest neighbour (similarity-weighted)
    assert k2[0] > 0 and k2[1] < 0.25 and abs(k2[2] - k2[3]) < 0.5
    big_k = rscin(scores, emb, [1, 2, 10])  # k larger than the batch is clamped
    assert torch.isfinite(big_k).all() and big_k.shape == (4,)
    flat = rscin(torch.ones(3, dtype=torch.float64), torch.eye(3), [1, 2])
    assert torch.equal(flat, torch.zeros(3, dtype=torch.float64))
