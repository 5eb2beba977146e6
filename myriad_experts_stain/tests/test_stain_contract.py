"""Myriad's expert contract, run on the soft-stain expert in both modes."""

from __future__ import annotations

from myriad.testing import ExpertContractTests

FAST = {"num_threads": 1, "bank_size": 4000}


class TestStainOneClass(ExpertContractTests):
    expert_name = "stain"
    config = {"mode": "one_class", **FAST}


class TestStainFewShot(ExpertContractTests):
    expert_name = "stain"
    config = {"mode": "few_shot", **FAST}
