"""Tapping the blocks of an open_clip ``VisionTransformer`` (CLIP, ImageBind's vision tower), for experts.

- :func:`vit_tokens`: raw outputs of chosen blocks (before ``ln_post``, CLS token first)
  and, unless asked not to, the projected image embedding;
- :func:`resize_positional_embedding`: run a ViT off its native size by resizing its
  positional embedding bicubically (24 x 24 -> 37 x 37 for ViT-L-14-336 at 518 px).

Torch is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from myriad.errors import WeightsError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["resize_positional_embedding", "vit_tokens"]


def vit_tokens(
    visual: "nn.Module", x: "torch.Tensor", taps: Sequence[int], pooled: bool = True
) -> tuple[list["torch.Tensor"], "torch.Tensor | None"]:
    """Raw outputs (``B x (1 + L) x W``) of the 0-indexed blocks ``taps`` and the projected image embedding.

    ``visual`` is an open_clip ``VisionTransformer`` (``conv1``, ``class_embedding``,
    ``positional_embedding``, ``ln_pre``, ``transformer.resblocks``, ``ln_post``, ``proj``);
    the input is cast to the stem's dtype. With ``pooled=False`` the blocks after the
    deepest tap are not run and the embedding is ``None``.
    """
    import torch

    x = visual.conv1(x.to(visual.conv1.weight.dtype))
    batch = x.shape[0]
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(batch, -1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype))
    batch_first = getattr(visual.transformer, "batch_first", False)
    if not batch_first:
        x = x.transpose(0, 1)
    wanted, last = set(taps), max(taps, default=-1)
    outs: dict[int, torch.Tensor] = {}
    for index, block in enumerate(visual.transformer.resblocks):
        x = block(x)
        if index in wanted:
            outs[index] = x if batch_first else x.transpose(0, 1)
        if not pooled and index >= last:
            break  # nothing after the deepest tap is needed
    tokens = [outs[i] for i in taps]
    if not pooled:
        return tokens, None
    if not batch_first:
        x = x.transpose(0, 1)
    embedding = visual.ln_post(x[:, 0])
    if visual.proj is not None:
        embedding = embedding @ visual.proj
    return tokens, embedding


def resize_positional_embedding(pos: "torch.Tensor", grid: int | tuple[int, int], prefix: int = 1) -> "torch.Tensor":
    """Bicubically resize a ``(prefix + g*g) x C`` (or ``1 x ... x C``) positional embedding to ``grid``.

    ``grid`` is the new patch grid (an int for a square one); the ``prefix`` entries (the
    CLS token) are kept as they are. The input is returned unchanged when it already fits.
    """
    import math

    import torch
    import torch.nn.functional as F

    grid = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    squeeze = pos.ndim == 2
    p = pos if squeeze else pos[0]
    head, body = p[:prefix], p[prefix:]
    side = int(math.isqrt(body.shape[0]))
    if side * side != body.shape[0]:
        raise WeightsError(f"positional embedding of {body.shape[0]} patches is not a square grid")
    if (side, side) == grid:
        return pos
    body = body.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    body = F.interpolate(body, size=grid, mode="bicubic", align_corners=False)
    body = body.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(p.dtype)
    out = torch.cat([head, body], dim=0)
    return out if squeeze else out[None]
