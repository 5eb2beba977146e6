"""The contract kit fails experts that are broken in ways its shape tests cannot see.

Each toy expert below is honest (its map is each pixel's colour distance to the normals' mean colour, on a grid of
8 x 8 blocks, its score the map's maximum) except for one defect chosen by its config: a score 1000 times its map,
a score taken as the map's mean, a block grid that only works on sides that are multiples of 8 or 16, or a score
scale that is not saved with its state. The kit runs on each in a fresh pytest; the good toy passes every contract
test and each broken one fails exactly the test meant to catch it.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

TOY_TESTS = '''
import types

import numpy as np
import pytest
from pydantic import BaseModel

from myriad.api import Expert, Mode, Prediction, hookimpl
from myriad.testing import ExpertContractTests


class ToyConfig(BaseModel):
    broken: str = "nothing"


def _blocks(d, side):
    """The map on a grid of side x side blocks, upsampled by repetition: needs H and W multiples of ``side``."""
    h, w = d.shape
    coarse = d.reshape(h // side, side, w // side, side).mean(axis=(1, 3))
    return np.kron(coarse, np.ones((side, side), np.float32))


def _honest_blocks(d, side=8):
    """The same grid for any size: the image padded to a multiple of the block side, the map cropped back."""
    h, w = d.shape
    padded = np.pad(d, ((0, -h % side), (0, -w % side)), mode="edge")
    return _blocks(padded, side)[:h, :w]


class ToyExpert(Expert):
    Config = ToyConfig

    def __init__(self, config):
        super().__init__(config, Mode.FEW_SHOT)
        self.scale = 0.5  # what fit learns (1.0), unless it is lost on reload

    def _fit(self, images):
        self.mean = np.mean([i.reshape(-1, 3).astype(np.float32).mean(axis=0) for i in images], axis=0)
        self.scale = 1.0

    def state_tensors(self):
        return {"mean": self.mean.astype(np.float32)}

    def load_state_tensors(self, tensors, metadata):
        self.mean = tensors["mean"].numpy()
        if self.config.broken != "unsaved-scale":
            self.scale = 1.0

    def _predict(self, images):
        out = []
        for image in images:
            d = np.linalg.norm(image.astype(np.float32) - self.mean, axis=2)
            if self.config.broken == "multiple-of-8":
                amap = _blocks(d, 8)
            elif self.config.broken == "multiple-of-16":
                amap = _blocks(d, 16)
            else:
                amap = _honest_blocks(d)
            score = float(amap.max())
            if self.config.broken == "score-1000x":
                score *= 1000.0
            elif self.config.broken == "score-mean":
                score = float(amap.mean())
            score *= self.scale
            out.append(Prediction(amap.astype(np.float32), score))
        return out


@pytest.fixture(autouse=True)
def _toy_plugin(myriad_plugin):
    @hookimpl
    def register_experts(register):
        register("toy", factory=ToyExpert, config=ToyConfig, modes=["few_shot"], description="Toy.")

    myriad_plugin(types.SimpleNamespace(register_experts=register_experts), name="toy-plugin")


class TestGood(ExpertContractTests):
    expert_name = "toy"
    config = {"broken": "nothing"}


class TestScore1000x(ExpertContractTests):
    expert_name = "toy"
    config = {"broken": "score-1000x"}


class TestScoreMean(ExpertContractTests):
    expert_name = "toy"
    config = {"broken": "score-mean"}


class TestMultipleOf8(ExpertContractTests):
    expert_name = "toy"
    config = {"broken": "multiple-of-8"}


class TestMultipleOf16(ExpertContractTests):
    expert_name = "toy"
    config = {"broken": "multiple-of-16"}


class TestMultipleOf16InAnotherConfig(ExpertContractTests):
    expert_name = "toy"
    config = {"broken": "nothing"}
    more_configs = ({"broken": "multiple-of-16"},)


class TestUnsavedScale(ExpertContractTests):
    expert_name = "toy"
    config = {"broken": "unsaved-scale"}


class TestScoreMeanOptedOut(ExpertContractTests):
    expert_name = "toy"
    config = {"broken": "score-mean"}
    score_map_skip_reason = "scores on a scale of their own (test of the opt-out)"
'''

#: what the kit must report for each toy; a test not listed here must pass
EXPECTED_FAILURES = {
    "TestScore1000x": {"test_score_is_on_its_maps_scale"},
    "TestScoreMean": {"test_score_is_on_its_maps_scale"},
    # the 64 and 80 px squares of the other tests are multiples of 8 and 16: only the odd sizes catch it
    "TestMultipleOf8": {"test_odd_image_sizes", "test_score_is_on_its_maps_scale"},
    "TestMultipleOf16": {"test_odd_image_sizes", "test_score_is_on_its_maps_scale"},
    "TestMultipleOf16InAnotherConfig": {"test_odd_image_sizes", "test_score_is_on_its_maps_scale"},
    "TestUnsavedScale": {"test_save_load_round_trip"},
}


def run_kit(tmp_path: Path) -> dict[str, dict[str, str]]:
    """Run the whole kit on the toy experts in a fresh pytest; class name -> test name -> outcome."""
    (tmp_path / "test_broken_toys.py").write_text(TOY_TESTS)
    report = tmp_path / "report.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         str(tmp_path / "test_broken_toys.py")],
        cwd=tmp_path, capture_output=True, text=True,
    )
    outcomes: dict[str, dict[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kind = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                kind = child.tag
        outcomes.setdefault(case.get("classname", "").rsplit(".", 1)[-1], {})[case.get("name", "")] = kind
    return outcomes


def test_the_kit_fails_each_broken_expert_where_it_is_broken(tmp_path: Path) -> None:
    """The good toy passes every contract test; each broken toy fails exactly the tests listed for it."""
    outcomes = run_kit(tmp_path)
    assert set(outcomes) == set(EXPECTED_FAILURES) | {"TestGood", "TestScoreMeanOptedOut"}, outcomes
    for toy, tests in outcomes.items():
        failing = {name for name, kind in tests.items() if kind in ("failure", "error")}
        assert failing == EXPECTED_FAILURES.get(toy, set()), (toy, tests)
    assert "test_score_is_on_its_maps_scale" in outcomes["TestGood"]
    assert outcomes["TestScoreMeanOptedOut"]["test_score_is_on_its_maps_scale"] == "skipped"
    assert all(kind == "passed" for kind in outcomes["TestGood"].values()), outcomes["TestGood"]
