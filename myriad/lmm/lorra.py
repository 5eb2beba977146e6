"""LoRRA, the low-rank residual adapter (paper Sec. 3.3): adapts every visual token before ``ln_vision``.

State-dict layout (see ``README_KEYS.md``): ``down.weight`` (r x d) and ``up.weight`` (d x r);
the authors' checkpoint names them ``expert_adaptor.conv1.weight`` / ``conv2.weight``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from myriad.lmm.config import MyriadConfig

__all__ = ["LoRRA", "build_lorra"]


class LoRRA(nn.Module):
    """Low-rank residual adapter applied to every token: ``x + up(down(x))``.

    Two bias-free linear maps (``dim -> rank -> dim``), no activation. ``init="normal"``
    draws both weights from N(0, ``std``) as the published code does; ``init="zero"``
    zeroes the up map so the adapter starts as the identity (the LoRA convention).
    """

    def __init__(self, dim: int, rank: int = 4, init: str = "normal", std: float = 0.02) -> None:
        super().__init__()
        if init not in ("normal", "zero"):
            raise ValueError(f"LoRRA init must be 'normal' or 'zero', got {init!r}")
        self.dim, self.rank, self.init, self.std = dim, rank, init, std
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.down.weight, std=self.std)
        if self.init == "zero":
            nn.init.zeros_(self.up.weight)
        else:
            nn.init.normal_(self.up.weight, std=self.std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        dtype = tokens.dtype
        x = tokens.to(self.down.weight.dtype)
        return (x + self.up(self.down(x))).to(dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, rank={self.rank}, init={self.init}"


def build_lorra(config: "MyriadConfig") -> LoRRA:
    """The LoRRA of ``config`` (over the backbone's token width), freshly initialised."""
    s = config.lorra
    return LoRRA(config.vision.token_dim, s.rank, init=s.init, std=s.init_std)
