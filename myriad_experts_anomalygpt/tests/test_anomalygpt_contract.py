"""Myriad's expert contract, run on AnomalyGPT: few-shot on the embedded CNN, one-class on the tiny ImageBind."""

from __future__ import annotations

import pytest

from myriad.testing import ExpertContractTests


class TestAnomalyGPTFewShotContract(ExpertContractTests):
    """Few-shot with the embedded EfficientNet-Lite0 (real weights)."""

    expert_name = "anomalygpt"
    config = {"backbone": "efficientnet_lite0", "image_size": 64}


class TestAnomalyGPTOneClassContract(ExpertContractTests):
    """One-class with the tiny ImageBind and decoder checkpoints (random weights: mechanics only)."""

    expert_name = "anomalygpt"
    sanity_skip_reason = (
        "random tiny ImageBind and decoder weights cannot detect anything: mechanics only "
        "(the sanity check passed by its seed alone)"
    )

    @pytest.fixture(autouse=True)
    def _weights(self, kit, tiny_weights) -> None:
        type(self).config = kit.tiny_config(tiny_weights, mode="one_class")
