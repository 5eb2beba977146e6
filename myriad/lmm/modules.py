"""The three trainable modules of Myriad, in pure torch: LoRRA, VPG and TPG.

State-dict layout (see ``README_KEYS.md``): ``LoRRA`` has ``down.weight`` (r x d) and
``up.weight`` (d x r); ``VisualPromptGenerator`` and ``TextualPromptGenerator`` hold one
``nn.Sequential`` named ``net`` whose convolutions sit at indices 0, 3, 6, 9, 12 (trunk)
and 15 (head), exactly like the published ``meta_net``; the TPG adds ``base_prompts``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["LoRRA", "TextualPromptGenerator", "VisualPromptGenerator", "trunk_layers"]


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


def trunk_layers(channels: Sequence[int]) -> list[nn.Module]:
    """``len(channels) - 1`` blocks of [conv3x3 pad 1 (bias), ReLU, maxpool 2]; convs at 0, 3, 6, ..."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return layers


class _MapPromptGenerator(nn.Module):
    """Shared shape logic of VPG and TPG (an anomaly map in, a token sequence out)."""

    net: nn.Sequential

    def __init__(
        self, channels: Sequence[int], map_size: int, init: str = "torch", head_bias_std: float | None = None, head_gain: float = 1.0,
        map_shift: float = 0.0, map_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if init not in ("torch", "kaiming"):
            raise ValueError(f"prompt-generator init must be 'torch' or 'kaiming', got {init!r}")
        self.channels = tuple(channels)
        self.map_size = map_size
        self.init = init
        self.head_bias_std = head_bias_std
        self.head_gain = head_gain
        self.map_shift, self.map_scale = map_shift, map_scale
        self.trunk_grid = map_size // 2 ** (len(self.channels) - 1)

    def _init_trunk(self) -> None:
        """``kaiming``: He-normal trunk convs with zero bias, so the map's signal survives 5 ReLU blocks.

        PyTorch's default conv init (``torch``, the published code) shrinks activations about
        3x in variance per block: after the trunk, normal and anomalous maps give tokens that
        differ by ~0.01 in norm, which a frozen LLM cannot tell apart. The head keeps PyTorch's
        init, its weight scaled by ``head_gain`` and, with ``head_bias_std``, its bias N(0, std).
        """
        convs = [m for m in self.net if isinstance(m, nn.Conv2d)]
        if self.init == "kaiming":
            for conv in convs[:-1]:
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)
        head = convs[-1]
        with torch.no_grad():
            head.weight.mul_(self.head_gain)
            if self.head_bias_std is not None:
                # A token-sized bias: where the map is flat (ReLU trunk output ~0) the tokens
                # are not near-zero vectors, whose direction a following norm layer would
                # blow up into noise; the map then modulates a stable token.
                nn.init.normal_(head.bias, std=self.head_bias_std)

    def _check(self, maps: torch.Tensor) -> None:
        expected = (1, self.map_size, self.map_size)
        if maps.ndim != 4 or tuple(maps.shape[1:]) != expected:
            raise ValueError(f"{type(self).__name__} expects B x 1 x {self.map_size} x {self.map_size} maps, got {tuple(maps.shape)}")

    def _run(self, maps: torch.Tensor) -> torch.Tensor:
        self._check(maps)
        dtype = next(self.net.parameters()).dtype
        maps = maps.to(dtype=dtype)
        if self.map_shift or self.map_scale != 1.0:
            # Centred input: with [0, 1] maps every feature shares a large common part, which
            # swamps the normal-vs-anomalous difference in Adam's step sizes.
            maps = (maps - self.map_shift) * self.map_scale
        out = self._head(self.net[:-1](maps))
        # B x D x h x w -> B x (h*w) x D, tokens in row-major order over the grid.
        return out.flatten(2).transpose(1, 2)

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net[-1](features)


class VisualPromptGenerator(_MapPromptGenerator):
    """VPG: anomaly map -> expert query tokens for the Q-Former (49 x 768 at paper dims)."""

    def __init__(
        self,
        out_dim: int = 768,
        channels: Sequence[int] = (1, 4, 16, 64, 256, 1024),
        map_size: int = 224,
        init: str = "torch",
        head_bias_std: float | None = None,
        head_gain: float = 1.0,
        map_shift: float = 0.0,
        map_scale: float = 1.0,
    ) -> None:
        super().__init__(channels, map_size, init, head_bias_std, head_gain, map_shift, map_scale)
        self.out_dim = out_dim
        self.net = nn.Sequential(*trunk_layers(self.channels), nn.Conv2d(self.channels[-1], out_dim, kernel_size=1))
        self._init_trunk()
        self.num_tokens = self.trunk_grid**2

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """``B x 1 x S x S`` maps -> ``B x num_tokens x out_dim`` query tokens."""
        return self._run(maps)


class TextualPromptGenerator(_MapPromptGenerator):
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


def count_parameters(module: nn.Module | None) -> int:
    """Number of parameters (works on the meta device)."""
    if module is None:
        return 0
    return sum(math.prod(p.shape) for p in module.parameters())
