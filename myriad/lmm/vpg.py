"""VPG, the visual prompt generator (paper Sec. 3.3): anomaly map -> expert queries for the Q-Former.

State-dict layout: ``net.{0,3,6,9,12,15}.{weight,bias}`` (see
:mod:`myriad.lmm.prompt_generator`); the authors' checkpoint names them
``VEInstructor.meta_net.*``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from myriad.lmm.prompt_generator import MapPromptGenerator, trunk_layers

if TYPE_CHECKING:  # pragma: no cover
    from myriad.lmm.config import MyriadConfig

__all__ = ["VisualPromptGenerator", "build_vpg"]


class VisualPromptGenerator(MapPromptGenerator):
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


def build_vpg(config: "MyriadConfig") -> VisualPromptGenerator:
    """The VPG of ``config`` (queries as wide as the Q-Former), freshly initialised."""
    pg = config.prompt_generators
    return VisualPromptGenerator(
        config.qformer.hidden_size, pg.trunk_channels, pg.map_size, pg.init, pg.vpg_head_bias_std, pg.head_gain, pg.map_shift, pg.map_scale
    )
