"""MuSc's compute steps against brute-force definitions (LNAMD, chunked mutual scoring, RsCIN)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from myriad_experts_musc.scoring import block_size, lnamd, mutual_scores, mutual_scoring_bytes, rscin


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


def brute_force_msm(z: torch.Tensor, topmin: float) -> torch.Tensor:
    n = z.shape[0]
    out = []
    for i in range(n):
        per_image = torch.stack([torch.cdist(z[i], z[j]).min(dim=1).values for j in range(n) if j != i], dim=1)
        k = max(1, int((n - 1) * topmin))
        out.append(per_image.sort(dim=1).values[:, :k].mean(dim=1))
    return torch.stack(out)


@pytest.mark.parametrize("chunk_bytes", [1, 4 * 7 * 7 * 4, 2**30])
@pytest.mark.parametrize("topmin", [0.3, 1.0])
def test_chunked_mutual_scoring_matches_brute_force(chunk_bytes: int, topmin: float) -> None:
    torch.manual_seed(1)
    z = F.normalize(torch.randn(7, 7, 4), dim=-1)
    got = mutual_scores(z, topmin=topmin, chunk_bytes=chunk_bytes)
    torch.testing.assert_close(got, brute_force_msm(z, topmin), rtol=1e-4, atol=1e-4)


def test_mutual_scoring_reports_progress_over_all_pairs() -> None:
    z = F.normalize(torch.randn(5, 4, 3), dim=-1)
    done = []
    mutual_scores(z, chunk_bytes=4 * 4 * 4 * 4, progress=done.append)  # 2 x 2 images per block
    assert sum(done) == 5 * 6 // 2


def test_mutual_scoring_needs_two_images() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        mutual_scores(torch.ones(1, 4, 3))
    two = mutual_scores(F.normalize(torch.randn(2, 4, 3), dim=-1))  # k = max(1, int(0.3)) = 1
    assert torch.isfinite(two).all()


def test_memory_bound_for_200_images_of_37x37_tokens() -> None:
    # ViT-L-14-336 at 518 px: 1369 tokens of 1024 channels; the default 512 MB blocks.
    chunk = 512 * 2**20
    a = block_size(1369, chunk)
    assert (a * 1369) ** 2 * 4 <= chunk
    assert mutual_scoring_bytes(200, 1369, 1024, chunk) < 3 * 2**30  # the whole step, far below 8 GB
    assert block_size(1369, 1) == 1  # never zero


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
