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

__all__ = ["TextualPromptGenerator", "build_tpg", "rate_feature"]


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
        rate_film: bool = False,
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
        # FiLM of the trunk's features by the expert's false-alarm rate: scale and shift per channel,
        # linear in log10(rate) + 1 and zero at the start, so a model without it is the same function.
        self.rate_film = nn.Linear(1, 2 * self.channels[-1], bias=False) if rate_film else None
        if self.rate_film is not None:
            nn.init.zeros_(self.rate_film.weight)

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        """The 5 x 5 head conv as one matrix product over unfolded patches: the same numbers, ~3x
        faster on CPU than ``nn.Conv2d`` for this shape (a 7 x 7 input, 1024 -> 576 channels: 46 -> 14 ms)."""
        head = self.net[-1]
        k = head.kernel_size[0]
        grid = features.shape[-1] - k + 1
        cols = nn.functional.unfold(features, k)  # B x (C*k*k) x grid^2
        out = head.weight.flatten(1) @ cols + head.bias[:, None]
        return out.view(features.shape[0], -1, grid, grid)

    def _modulate(self, features: torch.Tensor, rates: torch.Tensor | None) -> torch.Tensor:
        """``features * (1 + gamma) + beta`` with ``[gamma, beta] = W (log10(rate) + 1)`` (unchanged without FiLM)."""
        if self.rate_film is None:
            return features
        x = rate_feature(rates, features.shape[0], features.device).to(features.dtype)
        gamma, beta = self.rate_film(x[:, None]).chunk(2, dim=-1)
        return features * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]

    def reset_base_prompts(self) -> None:
        if self.base_prompts is not None:
            nn.init.normal_(self.base_prompts, std=self.base_prompt_std)

    def forward(self, maps: torch.Tensor, rates: torch.Tensor | None = None) -> torch.Tensor:
        """``B x 1 x S x S`` maps -> ``B x num_tokens x out_dim`` (base prompts first).

        ``rates``: the expert's expected false-alarm rate per image (``B``; NaN where unknown), read
        only with ``rate_film``."""
        tokens = self._run(maps, rates)
        if self.token_norm is not None:
            # A free norm grows in training (to ~100x a word embedding's on the mini model),
            # and such tokens swamp the frozen LLM's residual stream: bound it.
            tokens = tokens * (self.token_norm / tokens.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        if self.base_prompts is None:
            return tokens
        base = self.base_prompts.to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return torch.cat([base, tokens], dim=1)


def rate_feature(rates: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    """``log10(rate) + 1`` clipped to [-2, 1] per image (1 % -> -1, 10 % -> 0, 100 % -> 1); 0 where unknown."""
    if rates is None:
        return torch.zeros(batch, device=device)
    rates = torch.as_tensor(rates, dtype=torch.float32, device=device).reshape(-1)
    if rates.shape[0] != batch:
        raise ValueError(f"expected {batch} false-alarm rates (one per map), got {rates.shape[0]}")
    x = torch.log10(rates.clamp(1e-3, 1.0)) + 1
    return torch.where(torch.isnan(rates), torch.zeros_like(x), x.clamp(-2.0, 1.0))


def build_tpg(config: "MyriadConfig") -> TextualPromptGenerator:
    """The TPG of ``config`` (tokens as wide as the LLM's embeddings), freshly initialised."""
    pg = config.prompt_generators
    return TextualPromptGenerator(
        config.llm.hidden_size, pg.trunk_channels, pg.map_size, pg.tpg_kernel, pg.tpg_base_prompts, pg.tpg_base_prompt_std, pg.init,
        pg.tpg_head_bias_std, pg.head_gain, pg.map_shift, pg.map_scale, pg.tpg_token_norm, pg.tpg_rate_film,
    )
