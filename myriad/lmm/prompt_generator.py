"""What the two prompt generators (VPG and TPG) share: the published ``meta_net`` trunk over an anomaly map.

Both hold one ``nn.Sequential`` named ``net`` whose convolutions sit at indices 0, 3, 6,
9, 12 (trunk: [conv3x3 pad 1, ReLU, maxpool 2] per block) and 15 (head), exactly like the
published ``meta_net``; the map goes in as ``B x 1 x S x S`` and comes out as tokens in
row-major order over the head's grid. The generators themselves are in :mod:`myriad.lmm.vpg`
and :mod:`myriad.lmm.tpg`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["MapPromptGenerator", "trunk_layers"]


def trunk_layers(channels: Sequence[int]) -> list[nn.Module]:
    """``len(channels) - 1`` blocks of [conv3x3 pad 1 (bias), ReLU, maxpool 2]; convs at 0, 3, 6, ..."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return layers


class MapPromptGenerator(nn.Module):
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

    def _run(self, maps: torch.Tensor, rates: torch.Tensor | None = None) -> torch.Tensor:
        self._check(maps)
        dtype = next(self.net.parameters()).dtype
        maps = maps.to(dtype=dtype)
        if self.map_shift or self.map_scale != 1.0:
            # Centred input: with [0, 1] maps every feature shares a large common part, which
            # swamps the normal-vs-anomalous difference in Adam's step sizes.
            maps = (maps - self.map_shift) * self.map_scale
        out = self._head(self._modulate(self.net[:-1](maps), rates))
        # B x D x h x w -> B x (h*w) x D, tokens in row-major order over the grid.
        return out.flatten(2).transpose(1, 2)

    def _modulate(self, features: torch.Tensor, rates: torch.Tensor | None) -> torch.Tensor:
        """The trunk's features conditioned on per-image false-alarm rates (none here: unchanged)."""
        return features

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net[-1](features)
