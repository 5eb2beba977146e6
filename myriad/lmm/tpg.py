"""TPG, the textual prompt generator (paper Sec. 3.3): anomaly map -> expert tokens for the LLM.

State-dict layout: ``net.{0,3,6,9,12,15}.{weight,bias}`` (see
:mod:`myriad.lmm.prompt_generator`) and ``base_prompts``; the authors' checkpoint names
them ``VETokenizer.meta_net.*`` and ``VETokenizer.base_prompts``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from myriad.lmm.prompt_generator import MapPromptGenerator, trunk_layers

if TYPE_CHECKING:  # pragma: no cover
    from myriad.lmm.config import MyriadConfig

__all__ = ["TextualPromptGenerator", "build_tpg"]


class TextualPromptGenerator(MapPromptGenerator):
    """TPG: anomaly map -> expert tokens for the LLM (18 x 4096 at paper dims).

    The trunk ends in a ``kernel x kernel`` conv without padding (7x7 -> 3x3 = 9 tokens).
    With ``base_prompts=True`` (the published code) 9 learnable prompts drawn from
    N(0, ``base_prompt_std``; 1 in the code) are prepended, giving 18 tokens; ``False``
    gives the paper's 9 tokens. ``init``: see :meth:`_init_trunk`. With ``token_norm``
    every map token is rescaled to that L2 norm (its direction carries the map); the
    published code leaves the norm free (``None``).
    """

    def __init__(
        self,
        out_dim: int = 4096,
        channels: Sequence[int] = (1, 4, 16, 64, 256, 1024),
        map_size: int = 224,
        kernel: int = 5,
        base_prompts: bool = True,
        base_prompt_std: float = 1.0,
        init: str = "torch",
        head_bias_std: float | None = None,
        head_gain: float = 1.0,
        map_shift: float = 0.0,
        map_scale: float = 1.0,
        token_norm: float | None = None,
    ) -> None:
        super().__init__(channels, map_size, init, head_bias_std, head_gain, map_shift, map_scale)
        self.out_dim = out_dim
        if token_norm is not None and token_norm <= 0:
            raise ValueError(f"TPG token_norm must be positive, got {token_norm}")
        self.token_norm = token_norm
        self.net = nn.Sequential(*trunk_layers(self.channels), nn.Conv2d(self.channels[-1], out_dim, kernel_size=kernel))
        self._init_trunk()
        grid = self.trunk_grid - kernel + 1
        if grid < 1:
            raise ValueError(f"TPG kernel {kernel} does not fit the {self.trunk_grid}x{self.trunk_grid} trunk grid")
        self.num_map_tokens = grid * grid
        self.base_prompt_std = base_prompt_std
        self.base_prompts = nn.Parameter(torch.randn(self.num_map_tokens, out_dim) * base_prompt_std) if base_prompts else None
        self.num_tokens = self.num_map_tokens * (2 if base_prompts else 1)

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        """The 5 x 5 head conv as one matrix product over unfolded patches: the same numbers, ~3x
        faster on CPU than ``nn.Conv2d`` for this shape (a 7 x 7 input, 1024 -> 576 channels: 46 -> 14 ms)."""
        head = self.net[-1]
        k = head.kernel_size[0]
        grid = features.shape[-1] - k + 1
        cols = nn.functional.unfold(features, k)  # B x (C*k*k) x grid^2
        out = head.weight.flatten(1) @ cols + head.bias[:, None]
        return out.view(features.shape[0], -1, grid, grid)

    def reset_base_prompts(self) -> None:
        if self.base_prompts is not None:
            nn.init.normal_(self.base_prompts, std=self.base_prompt_std)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """``B x 1 x S x S`` maps -> ``B x num_tokens x out_dim`` (base prompts first)."""
        tokens = self._run(maps)
        if self.token_norm is not None:
            # A free norm grows in training (to ~100x a word embedding's on the mini model),
            # and such tokens swamp the frozen LLM's residual stream: bound it.
            tokens = tokens * (self.token_norm / tokens.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        if self.base_prompts is None:
            return tokens
        base = self.base_prompts.to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return torch.cat([base, tokens], dim=1)


def build_tpg(config: "MyriadConfig") -> TextualPromptGenerator:
    """The TPG of ``config`` (tokens as wide as the LLM's embeddings), freshly initialised."""
    pg = config.prompt_generators
    return TextualPromptGenerator(
        config.llm.hidden_size, pg.trunk_channels, pg.map_size, pg.tpg_kernel, pg.tpg_base_prompts, pg.tpg_base_prompt_std, pg.init,
        pg.tpg_head_bias_std, pg.head_gain, pg.map_shift, pg.map_scale, pg.tpg_token_norm,
    )
