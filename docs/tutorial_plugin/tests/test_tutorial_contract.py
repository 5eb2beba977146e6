"""The tutorial plugin runs Myriad's contract tests on itself: that is all a plugin needs."""

from myriad.testing import ExpertContractTests


class TestColourStats(ExpertContractTests):
    expert_name = "colour-stats"
    config = {"size": 32}
    more_configs = ({"size": 17, "blur": 0.0}, {"mode": "one_class", "size": 48})
