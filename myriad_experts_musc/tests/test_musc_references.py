"""MuSc's reference-subset option through the expert: config validation, seeds, the exact variant."""

from __future__ import annotations

import numpy as np
import pytest

from myriad.errors import MyriadError
from myriad.plugins import get_expert
from myriad_experts_musc.plugin import DEFAULT_REFERENCES, MuScConfig

SMALL = {"image_size": 64, "r_list": [1], "rscin_k": [], "progress": False}


def test_config_defaults_and_validation() -> None:
    config = MuScConfig()
    assert config.references == DEFAULT_REFERENCES and config.seed == 0
    assert MuScConfig(references=None).references is None  # the exact all-pairs variant
    for bad in (0, -3, 2.5, "many"):
        with pytest.raises(MyriadError, match="references"):
            get_expert("musc", {"references": bad})
    with pytest.raises(MyriadError, match="seed"):
        get_expert("musc", {"seed": "x"})


def test_subset_is_deterministic_per_seed_and_exact_is_available(bricks: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    images = bricks[0][:9]
    expert = get_expert("musc", {**SMALL, "references": 2, "seed": 0})
    grids, _ = expert.extract(images)

    def maps(**settings: object) -> np.ndarray:
        expert.config = expert.config.model_copy(update=settings)
        return expert.score_maps(grids).numpy()

    a = maps(references=2, seed=0)
    np.testing.assert_array_equal(a, maps(references=2, seed=0))
    assert not np.array_equal(a, maps(references=2, seed=1))
    exact = maps(references=None)
    np.testing.assert_array_equal(exact, maps(references=8))  # 8 = N - 1: every other image
    assert not np.array_equal(a, exact)
    # predict uses the configured references (here: the exact variant set last)
    got = np.stack([p.anomaly_map for p in expert.predict(images)])
    want = get_expert("musc", {**SMALL, "references": None}).predict(images)
    np.testing.assert_array_equal(got, np.stack([p.anomaly_map for p in want]))
