"""Myriad's expert contract, run on AprilGAN: zero-shot on the tiny random CLIP, few-shot with its memory branch."""

from __future__ import annotations

import pytest

from myriad.testing import ExpertContractTests

APRILGAN_SCORE_SCALE = (
    "AprilGAN's image score is the paper's, on a scale of its own (zero-shot: CLIP's image-level abnormal "
    "probability; few-shot: its mean with the map maximum over the layer count), not its map's maximum: on the tiny "
    "weights the calibrated scores are 0 where the calibrated maps peak at 1 (gap 1.0)"
)


class TestAprilGANZeroShotContract(ExpertContractTests):
    """Zero-shot on the tiny CLIP (random weights: mechanics only)."""

    expert_name = "aprilgan"
    sanity_skip_reason = "random tiny CLIP weights cannot detect anything: mechanics only"
    score_map_skip_reason = APRILGAN_SCORE_SCALE

    @pytest.fixture(autouse=True)
    def _weights(self, kit, tiny_weights) -> None:
        type(self).config = kit.tiny_config(tiny_weights)


class TestAprilGANFewShotContract(ExpertContractTests):
    """Few-shot: tiny CLIP zero-shot branch + embedded EfficientNet-Lite0 memory."""

    expert_name = "aprilgan"
    score_map_skip_reason = APRILGAN_SCORE_SCALE

    @pytest.fixture(autouse=True)
    def _weights(self, kit, tiny_weights) -> None:
        type(self).config = kit.tiny_config(tiny_weights, mode="few_shot", few_shot_backbone="efficientnet_lite0")
