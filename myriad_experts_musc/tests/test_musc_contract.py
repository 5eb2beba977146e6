"""MuSc passes Myriad's expert contract (embedded EfficientNet-Lite0 at a small size)."""

from __future__ import annotations

from myriad.testing import ExpertContractTests


class TestMuScContract(ExpertContractTests):
    expert_name = "musc"
    config = {"image_size": 64, "progress": False}
    batch_size = 3  # transductive: predict gets 3 images (min_batch is 2)
