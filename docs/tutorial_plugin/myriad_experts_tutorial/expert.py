"""The colour-stats expert: per-pixel mean and spread of blurred colour over normal images.

A pixel's anomaly is its largest per-channel z-score against the normal images at
the same position; the image score is the map's maximum. It suits aligned objects
and flat surfaces (stains, missing parts), not textures that move around.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from myriad.api import Expert, Prediction, WeightsError, resize_map, to_tensor

from myriad_experts_tutorial.plugin import ColourStatsConfig


class ColourStatsExpert(Expert):
    """Few-shot / one-class expert from per-pixel colour statistics."""

    Config = ColourStatsConfig

    def __init__(self, config: ColourStatsConfig) -> None:
        super().__init__(config, config.mode)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def _features(self, images: list[np.ndarray]) -> np.ndarray:
        batch = to_tensor(images, self.config.size, normalisation="half").numpy()
        if self.config.blur > 0:
            batch = gaussian_filter(batch, sigma=(0, 0, self.config.blur, self.config.blur))
        return batch  # B x 3 x size x size

    def _fit(self, images: list[np.ndarray]) -> None:
        feats = self._features(images)
        self.mean = feats.mean(axis=0)
        self.std = feats.std(axis=0) + 0.05  # floor: k=1 references have zero spread

    def _predict(self, images: list[np.ndarray]) -> list[Prediction]:
        z = np.abs(self._features(images) - self.mean) / self.std
        maps = z.max(axis=1)
        return [
            Prediction(anomaly_map=resize_map(m, *img.shape[:2]), score=float(m.max()))
            for m, img in zip(maps, images)
        ]

    def state_tensors(self) -> dict[str, np.ndarray]:
        return {} if self.mean is None else {"mean": self.mean, "std": self.std}

    def load_state_tensors(self, tensors: dict, metadata: dict) -> None:
        mean = tensors["mean"].numpy()
        if mean.shape != (3, self.config.size, self.config.size):
            raise WeightsError(f"saved statistics have shape {mean.shape}, config size is {self.config.size}")
        self.mean, self.std = mean, tensors["std"].numpy()
