"""Myriad's expert contract, run on the global expert in both modes and with the spectrum statistics."""

from __future__ import annotations

from myriad.testing import ExpertContractTests

FAST = {"image_size": 64, "device": "cpu", "num_threads": 1}
#: the kit's odd sizes, no side under 64 px: the energy statistics run at the image's own resolution on a pyramid
#: whose coarsest level needs about 64 px a side, and smaller images are refused with a MyriadError naming the size
#: (83 x 61: "a 5 x 3 pyramid level is too small for the energy statistics")
ODD_SIZES = ((83, 65), (65, 67))


class TestGlobalOneClass(ExpertContractTests):
    expert_name = "global"
    odd_sizes = ODD_SIZES
    config = {"mode": "one_class", **FAST}


class TestGlobalFewShot(ExpertContractTests):
    expert_name = "global"
    odd_sizes = ODD_SIZES
    config = {"mode": "few_shot", **FAST}


class TestGlobalWithSpectrum(ExpertContractTests):
    expert_name = "global"
    odd_sizes = ODD_SIZES
    config = {"mode": "one_class", "groups": ["cnn", "energy", "spectrum"], **FAST}
