"""Myriad's expert contract, run on PatchCore in both modes with a small, fast config."""

from myriad.testing import ExpertContractTests


class TestPatchCoreOneClass(ExpertContractTests):
    expert_name = "patchcore"
    config = {"mode": "one_class", "image_size": 64, "device": "cpu", "num_threads": 1}


class TestPatchCoreFewShot(ExpertContractTests):
    expert_name = "patchcore"
    config = {"mode": "few_shot", "image_size": 64, "device": "cpu", "num_threads": 1, "augment": "flip"}
