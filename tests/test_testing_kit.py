"""The testing kit itself: its sanity test fails experts that detect nothing (all-zero, constant, inverted maps)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from myriad.testing import synthetic_defect_images, synthetic_images

TOY_TESTS = '''
import types

import numpy as np
import pytest
from pydantic import BaseModel

from myriad import hookimpl
from myriad.experts import Expert, Mode, Prediction
from myriad.testing import ExpertContractTests


class ToyConfig(BaseModel):
    kind: str = "good"


class ToyExpert(Expert):
    """Colour distance to the normals' mean colour; ``kind`` breaks it on purpose."""

    Config = ToyConfig

    def __init__(self, config):
        super().__init__(config, Mode.FEW_SHOT)

    def _fit(self, images):
        self.mean = np.mean([i.reshape(-1, 3).astype(np.float32).mean(axis=0) for i in images], axis=0)

    def _predict(self, images):
        out = []
        for image in images:
            d = np.linalg.norm(image.astype(np.float32) - self.mean, axis=2)
            amap = {"good": d, "image-level": np.full_like(d, d.max()), "zero": np.zeros_like(d),
                    "constant": np.ones_like(d), "inverted": -d}[self.config.kind]
            score = float(d.max()) if self.config.kind == "inverted" else float(amap.max())
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
    config = {"kind": "good"}


class TestImageLevel(ExpertContractTests):
    expert_name = "toy"
    config = {"kind": "image-level"}


class TestZero(ExpertContractTests):
    expert_name = "toy"
    config = {"kind": "zero"}


class TestConstant(ExpertContractTests):
    expert_name = "toy"
    config = {"kind": "constant"}


class TestInverted(ExpertContractTests):
    expert_name = "toy"
    config = {"kind": "inverted"}


class TestOptedOut(ExpertContractTests):
    expert_name = "toy"
    config = {"kind": "zero"}
    sanity_skip_reason = "random weights: mechanics only"
'''


def run_kit(tmp_path: Path) -> dict[str, str]:
    """Run the kit's sanity test on the toy experts in a fresh pytest; class name -> outcome."""
    (tmp_path / "test_toys.py").write_text(TOY_TESTS)
    report = tmp_path / "report.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "test_detects_a_synthetic_defect",
         f"--junitxml={report}", str(tmp_path / "test_toys.py")],
        cwd=tmp_path, capture_output=True, text=True,
    )
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kind = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                kind = child.tag
        outcomes[case.get("classname").rsplit(".", 1)[-1]] = kind
    return outcomes


def test_sanity_test_fails_experts_that_detect_nothing(tmp_path):
    assert run_kit(tmp_path) == {
        "TestGood": "passed",
        "TestImageLevel": "passed",  # an honest image-level map is allowed
        "TestZero": "failure",
        "TestConstant": "failure",
        "TestInverted": "failure",  # its scores are right, its map is upside down
        "TestOptedOut": "skipped",
    }


def test_defect_masks_mark_the_red_square_and_images_are_unchanged():
    images, masks = synthetic_defect_images(2, 32, seed=3)
    assert images[0].tobytes() == synthetic_images(2, 32, seed=3, defect=True)[0].tobytes()
    for image, mask in zip(images, masks):
        assert mask.sum() == 8 * 8
        assert (image[mask] == [250, 30, 30]).all()
        assert not (image[~mask] == [250, 30, 30]).all(axis=-1).any()
