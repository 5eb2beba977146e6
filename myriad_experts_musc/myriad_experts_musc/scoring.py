"""MuSc's three steps as pure torch functions: LNAMD, mutual scoring (MSM) and RsCIN.

Shapes: ``N`` images, ``L = h * w`` patches per image, ``C`` channels.

- :func:`lnamd`: per image LayerNorm over (C, H, W) of one layer, mean over each
  ``r x r`` neighbourhood (stride 1, zero padding counted, as an unfold followed by
  a per-channel mean), bilinear resize to the common grid, L2 normalisation.
- :func:`mutual_scores`: each patch's minimum Euclidean distance to every OTHER
  image (exact, the paper) or to ``R`` seeded random reference images (cost
  ``N R / 2`` pairs instead of ``N (N - 1) / 2``), then the mean of the lowest
  ``topmin`` fraction of those distances. The ``N^2 L^2`` similarity matrix is never
  held at once: one image's patches are matched against a chunk of partners that
  fits ``chunk_bytes`` by one matmul into a reused buffer, and each chunk serves both
  directions (``i -> j`` and ``j -> i``), so every pair is computed once.
- :func:`rscin`: re-scores image scores by their most similar images (class
  embeddings), averaged over a k-list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

_FLOAT_BYTES = 4
#: images per chunk of the final top-k (bounds its values + indices)
_TOPK_ROWS = 16


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


def columns_per_chunk(num_patches: int, chunk_bytes: int) -> int:
    """Reference images per matmul so that the ``L x (c L)`` similarity chunk fits ``chunk_bytes`` (at least 1)."""
    return max(1, chunk_bytes // (_FLOAT_BYTES * num_patches * num_patches))


def reference_offsets(num_images: int, references: int | None) -> int | None:
    """Half-width ``h`` of the reference band (each image meets ``2 h`` others), or None for exact all-pairs.

    None, or a ``references`` that reaches every other image (``2 * ceil(R / 2) >= N - 1``),
    means all pairs; odd ``references`` round up to the next even number.
    """
    if references is None:
        return None
    if references < 1:
        raise ValueError(f"references must be a positive number of images or None, got {references}")
    half = (references + 1) // 2
    return None if 2 * half >= num_images - 1 else half


def mutual_scoring_bytes(
    num_images: int, num_patches: int, channels: int, chunk_bytes: int, references: int | None = None
) -> int:
    """Peak working memory of :func:`mutual_scores` (features, the table of best matches, one chunk, the top-k)."""
    half = reference_offsets(num_images, references)
    slots = num_images if half is None else 2 * half
    c = min(columns_per_chunk(num_patches, chunk_bytes), max(1, num_images - 1))
    features = num_images * num_patches * channels * _FLOAT_BYTES
    table = num_images * num_patches * slots * _FLOAT_BYTES
    chunk = num_patches * c * num_patches * _FLOAT_BYTES + c * num_patches * channels * _FLOAT_BYTES
    rows = min(num_images, _TOPK_ROWS)
    topk = rows * num_patches * slots * (_FLOAT_BYTES + 8)  # values + int64 indices of one row chunk
    return features + table + chunk + topk


def pair_plan(
    num_images: int, references: int | None, seed: int = 0
) -> tuple[list["torch.Tensor"], list["torch.Tensor"], list["torch.Tensor"], int]:
    """Which pairs :func:`mutual_scores` computes: per image ``p`` its partners and table slots.

    Returns ``(partners, own_slots, their_slots, slots)``: image ``p`` is matched once with
    each ``partners[p][t]``; the best similarities of ``p``'s patches go to
    ``table[p, :, own_slots[p][t]]`` and those of the partner's patches to
    ``table[partners[p][t], :, their_slots[p][t]]``, so every computed pair serves both
    images. Exact (``references`` None or covering everyone): partners are the images
    after ``p``, the slot is the other image's index (``slots = N``; the diagonal stays
    unused). Subset: the images are put in a random order drawn from ``seed``, and each
    meets the ``h`` images after it in that circular order (slots ``0..h-1``) and,
    through their rows, the ``h`` before it (slots ``h..2h-1``): ``2 h`` references per
    image, ``N h`` pairs in all, deterministic for a seed.
    """
    import torch

    half = reference_offsets(num_images, references)
    if half is None:
        partners = [torch.arange(p + 1, num_images) for p in range(num_images)]
        own = [part.clone() for part in partners]
        theirs = [torch.full((num_images - p - 1,), p, dtype=torch.long) for p in range(num_images)]
        return partners, own, theirs, num_images
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(num_images, generator=generator)
    offsets = torch.arange(1, half + 1)
    partners = [torch.empty(0, dtype=torch.long)] * num_images
    own = [offsets - 1] * num_images
    theirs = [offsets - 1 + half] * num_images
    for position in range(num_images):
        partners[int(order[position])] = order[(position + offsets) % num_images]
    return partners, own, theirs, 2 * half


def mutual_scores(
    z: "torch.Tensor",
    topmin: float = 0.3,
    chunk_bytes: int = 512 * 2**20,
    progress: Callable[[int], object] | None = None,
    *,
    references: int | None = None,
    seed: int = 0,
) -> "torch.Tensor":
    """Mutual scoring of ``N x L x C`` unit vectors: an ``N x L`` tensor of patch scores.

    For image ``i`` and patch ``p``: ``d_j = min_q ||z_ip - z_jq||`` for each reference
    image ``j`` of ``i``; the score is the mean of the ``max(1, int(R * topmin))`` smallest
    ``d_j``, with ``R`` references per image. ``references=None`` (or one reaching every
    other image): every other image is a reference (``R = N - 1``, the paper's exact
    all-pairs scoring). Otherwise each image gets ``R`` (rounded up to even) references
    of a seeded random circular order (:func:`pair_plan`): cost ``N R / 2`` pairs, not
    ``N (N - 1) / 2``.

    Memory stays bounded: one ``L x (c L)`` similarity chunk (``chunk_bytes``, reused),
    a table of best similarities (``N x L x R``, or ``N x L x N`` for all pairs) and the
    final top-k in chunks of images. ``progress(n)`` is called after each chunk with the
    number of image pairs done.
    """
    import torch

    n, length, channels = z.shape
    if n < 2:
        raise ValueError(f"mutual scoring needs at least 2 images, got {n}")
    z = z.float().contiguous()
    partners, own, theirs, slots = pair_plan(n, references, seed)
    per_chunk = columns_per_chunk(length, chunk_bytes)
    buffer = torch.empty(length * min(per_chunk, n - 1) * length, dtype=torch.float32, device=z.device)
    # table[i, p, s] = max_q <z_ip, z_jq> for i's s-th reference j (unit vectors: distance = sqrt(2 - 2 * similarity))
    table = torch.full((n, length, slots), -torch.inf, dtype=torch.float32, device=z.device)
    for image in range(n):
        rows = z[image]
        for start in range(0, len(partners[image]), per_chunk):
            others = partners[image][start : start + per_chunk].to(z.device)
            c = len(others)
            sim = buffer[: length * c * length].view(length, c * length)
            torch.matmul(rows, z[others].reshape(c * length, channels).T, out=sim)
            sim = sim.view(length, c, length)
            table[image][:, own[image][start : start + c].to(z.device)] = sim.amax(dim=2)
            table[others, :, theirs[image][start : start + c].to(z.device)] = sim.amax(dim=0)
            if progress is not None:
                progress(c)
    del buffer
    used = n - 1 if slots == n else slots
    k = max(1, int(used * topmin))
    out = torch.empty(n, length, dtype=torch.float32, device=z.device)
    for start in range(0, n, _TOPK_ROWS):  # the top-k in chunks of images: bounded memory
        best = torch.topk(table[start : start + _TOPK_ROWS], k, dim=2, largest=True, sorted=False).values
        out[start : start + _TOPK_ROWS] = (2.0 - 2.0 * best).clamp_(min=0.0).sqrt_().mean(dim=2)
    return out


def position_baseline(maps: "torch.Tensor", method: str) -> "torch.Tensor":
    """Compare each image's ``h x w`` score map with the batch at every position.

    ``maps``: ``N x h x w``. ``median``: subtract the per-position median over the batch;
    ``robust-z``: then divide by the per-position median absolute deviation, floored at half
    its mean over positions (a small batch's deviations are noisy: measured on 13 brick crops,
    a floor of a tenth let one normal crop outscore the defects; on 280-image batches the
    floor changes no AUROC);
    ``none``: unchanged. MuSc's premise, that most images of a batch are normal, makes the
    median map the score a normal image gets at each position (it carries the border and
    padding effects that every image shares).
    """
    import torch

    if method == "none":
        return maps
    if method not in ("median", "robust-z"):
        raise ValueError(f"position_baseline must be 'robust-z', 'median' or 'none', got {method!r}")
    centre = maps.median(dim=0).values
    out = maps - centre
    if method == "robust-z":
        spread = out.abs().median(dim=0).values
        floor = max(float(spread.mean()) * 0.5, torch.finfo(maps.dtype).tiny)
        out = out / spread.clamp(min=floor)
    return out


def num_pairs(n: int, references: int | None = None) -> int:
    """Image pairs that :func:`mutual_scores` computes (each serves both of its images)."""
    half = reference_offsets(n, references)
    return n * (n - 1) // 2 if half is None else n * half


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
