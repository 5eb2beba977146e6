"""Myriad's verdict: the LMM's threshold calibrated on held-out normal maps, never a veto of the expert (rule ``either``)."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
from myriad.errors import ConfigError
from myriad.experts import Expert, Mode, Prediction
from myriad.hookspecs import hookimpl
from myriad.testing import brightness_expert, brightness_expert_plugin
from myriad.verdict import MIN_VERDICT_NORMALS, VerdictCalibration, calibrate_verdict


class SpreadExpert(Expert):
    """Toy image-level expert: a constant map at |std - the normals' std|."""

    Config = brightness_expert().Config

    def __init__(self, config):
        super().__init__(config, Mode.ONE_CLASS)

    def _fit(self, images):
        self.level = float(np.mean([i.std() for i in images]))

    def state_tensors(self):
        return {"level": np.array([self.level], np.float32)}

    def load_state_tensors(self, tensors, metadata):
        self.level = float(tensors["level"][0])

    def _predict(self, images):
        out = []
        for i in images:
            s = abs(float(i.std()) - self.level)
            out.append(Prediction(np.full(i.shape[:2], s, np.float32), s))
        return out


@hookimpl
def register_experts(register):
    register("spread-toy", factory=SpreadExpert, config=SpreadExpert.Config, modes=["one_class"], description="toy spread")


@pytest.fixture
def toys(myriad_plugin):
    myriad_plugin(brightness_expert_plugin("bright-toy"), name="verdict-bright")
    myriad_plugin(types.SimpleNamespace(register_experts=register_experts), name="verdict-spread")


def _images(n, seed, size=32):
    rng = np.random.default_rng(seed)
    return [np.clip(120 + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


# ------------------------------------------------------------------------------------------- the rule


def test_either_threshold_is_the_largest_margin_of_the_normals_the_expert_does_not_flag():
    margins = [-4.0, -3.5, -2.0, 3.0] + [-5.0] * 10
    flags = [False, False, False, True] + [False] * 10  # the flagged normal's Yes is the expert's alarm, not the LMM's
    cal = calibrate_verdict(margins, flags)
    assert cal.active == "either" and cal.threshold == -2.0 and cal.num_normals == 13
    assert cal.added_rate == pytest.approx(1 / 14)
    assert cal.false_alarm_rate(0.05) == pytest.approx(1 - 0.95 * (1 - 1 / 14))
    tail = calibrate_verdict(margins, flags, false_alarm_rate=0.1)
    assert tail.added_rate == 0.1 and tail.threshold <= -2.0


def test_either_never_vetoes_and_adds_only_above_the_threshold():
    cal = VerdictCalibration(rule="either", active="either", threshold=-1.0, num_normals=20, added_rate=1 / 21)
    assert cal.decide(True, -9.0, "normal") == (True, "expert")  # the LMM's No does not overrule an alarm
    assert cal.decide(True, 2.0, "anomalous") == (True, "both")
    assert cal.decide(False, -0.5, "normal") == (True, "lmm")  # more confident than on any calibration normal
    assert cal.decide(False, -1.0, "normal") == (False, "both")
    lmm = VerdictCalibration(rule="lmm", active="lmm")
    assert lmm.decide(True, -3.0, "normal") == (False, "lmm") and lmm.decide(True, 0.0, "unknown") == (True, "expert")
    assert lmm.false_alarm_rate(0.05) is None  # uncalibrated: nobody measured what it adds
    expert = VerdictCalibration(rule="expert", active="expert")
    assert expert.decide(False, 9.0, "anomalous") == (False, "expert") and expert.false_alarm_rate(0.05) == 0.05


def test_too_few_normals_fall_back_to_the_expert_and_say_so():
    cal = calibrate_verdict([-3.0] * (MIN_VERDICT_NORMALS - 1), [False] * (MIN_VERDICT_NORMALS - 1))
    assert cal.active == "expert" and "fewer than" in cal.fallback and cal.threshold is None
    assert cal.decide(False, 9.0, "anomalous") == (False, "expert")
    assert "expert's decision" in cal.describe()


def test_bad_input_is_one_clear_error():
    with pytest.raises(ConfigError, match="verdict rule must be one of"):
        calibrate_verdict([], [], rule="vote")
    with pytest.raises(ConfigError, match="not a finite number"):
        calibrate_verdict([math.nan] * 12, [False] * 12)
    with pytest.raises(ConfigError, match="3 verdict margins for 2"):
        calibrate_verdict([0.0] * 3, [False] * 2)
    with pytest.raises(ConfigError, match="not a verdict calibration record"):
        VerdictCalibration.from_dict({"rule": "either", "colour": "red"})
    cal = calibrate_verdict([-2.0] * 12, [False] * 12)
    assert VerdictCalibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal


# ------------------------------------------------------------------------------------ held-out maps


def test_detectors_keep_held_out_normal_maps_that_match_their_calibration(toys):
    from myriad.fusion import make_detector

    normals = _images(12, seed=0)
    single = make_detector("bright-toy").fit(normals, keep_heldout=True)
    held = single.heldout_detections()
    assert len(held) == 12 and not any(d.anomalous for d in held)  # the paper's threshold: the largest of them
    assert max(d.score for d in held) == pytest.approx(0.5)
    assert make_detector("bright-toy").fit(normals).heldout_detections() is None  # not kept unless asked
    fused = make_detector("bright-toy+spread-toy").fit(normals, keep_heldout=True)
    held = fused.heldout_detections()
    assert len(held) == 12 and set(held[0].members) == {"bright-toy", "spread-toy"}
    assert not any(d.anomalous for d in held)  # fused as detect fuses: the fused threshold is their largest evidence
    assert max(d.score for d in held) == pytest.approx(0.5)
    one = make_detector("bright-toy").fit(normals[:1], keep_heldout=True)
    assert one.heldout_detections() is None  # one reference: calibrated on its mirror images, not itself


def test_the_normal_on_the_experts_threshold_counts_with_the_experts_alarms(toys):
    from myriad.fusion import make_detector
    from myriad.lmm_verdict import heldout_flags

    held = make_detector("bright-toy").fit(_images(12, seed=3), keep_heldout=True).heldout_detections()
    flags = heldout_flags(held)
    top = int(np.argmax([d.score for d in held]))
    assert flags[top] and sum(flags) == 1 and not held[top].anomalous


# -------------------------------------------------------------------------------- inspect and eval


def _map_model(torch):
    """A tiny model whose verdict margin is read off the map: 40 x (map max - 0.45)."""
    from myriad.lmm.model import MyriadLMM
    from myriad.lmm.prompting import ANSWER_ANOMALOUS, ANSWER_NORMAL
    from myriad.lmm.tiny import build_tiny_tokenizer, tiny_paper_config

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = MyriadLMM(tiny_paper_config(len(tokenizer), max_new_tokens=4), tokenizer).eval()
    calls = []

    def answer_with_margin(pixels, maps, question=None, **generation):
        margins = 40.0 * (maps.flatten(1).amax(dim=1) - 0.45)
        calls.append(len(pixels))
        return [ANSWER_ANOMALOUS if m > 0 else ANSWER_NORMAL for m in margins], margins

    model.answer_with_margin = answer_with_margin
    return model, calls


def test_inspector_calibrates_the_verdict_at_fit_and_states_its_rate(toys):
    torch = pytest.importorskip("torch")
    from myriad.inspection import Inspector

    model, calls = _map_model(torch)
    normals = _images(16, seed=1)
    inspector = Inspector("bright-toy", model=model).fit(normals)
    assert sum(calls) == 16  # each held-out normal asked once
    verdict = inspector.verdict
    # the normals on the expert's threshold (their maps peak at 0.5) are the expert's boundary, not quiet normals
    from myriad.lmm_verdict import heldout_flags

    assert inspector.detector.heldout_detections() is None  # dropped once the verdict is calibrated
    from myriad.fusion import make_detector

    boundary = sum(heldout_flags(make_detector("bright-toy").fit(normals, keep_heldout=True).heldout_detections()))
    assert boundary >= 1 and verdict.active == "either" and verdict.num_normals == 16 - boundary
    quiet = 16 - boundary
    assert inspector.verdict_false_alarm_rate == pytest.approx(1 - (1 - 1 / 17) * (1 - 1 / (quiet + 1)))
    tests = _images(4, seed=5)
    faint = tests[1].copy()
    faint[4:8, 4:8] = np.clip(faint[4:8, 4:8].astype(int) + 22, 0, 255).astype(np.uint8)  # under the expert's threshold?
    strong = tests[2].copy()
    strong[4:8, 4:8] = 255
    results = inspector.inspect([tests[0], faint, strong])
    for r in results:
        assert r.decision == "anomalous" or r.expert_decision == "normal"  # never a veto
        record = r.as_record()
        assert record["verdict_source"] == r.verdict_source and "lmm_margin" in record
        assert record["verdict_false_alarm_rate"] == pytest.approx(inspector.verdict_false_alarm_rate, abs=1e-4)
    assert results[2].decision == "anomalous"
    added = [r for r in results if r.verdict_source == "lmm"]
    assert all(r.decision == "anomalous" and r.lmm_margin > verdict.threshold for r in added)
    paper = Inspector("bright-toy", model=model, verdict="lmm").fit(normals)
    assert paper.verdict.active == "lmm" and paper.verdict_false_alarm_rate is None
    with pytest.raises(ConfigError, match="verdict rule"):
        Inspector("bright-toy", model=model, verdict="vote")


def test_eval_reports_the_calibrated_verdict_beside_the_raw_answers(toys, tmp_path):
    torch = pytest.importorskip("torch")
    from PIL import Image

    from myriad.evaluation.lmm_step import LMMStep
    from myriad.evaluation.runner import EvalSettings, evaluate

    root = tmp_path / "data" / "toy"
    for i, image in enumerate(_images(14, seed=2)):
        (root / "train" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "train" / "good" / f"{i:03d}.png")
    tests = _images(6, seed=3)
    for i, image in enumerate(tests[:3]):
        (root / "test" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "test" / "good" / f"{i:03d}.png")
    for i, image in enumerate(tests[3:]):
        image = image.copy()
        image[8:14, 8:14] = 250
        (root / "test" / "spot").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "test" / "spot" / f"{i:03d}.png")
    model, calls = _map_model(torch)
    step = LMMStep(model)
    settings = EvalSettings(expert="bright-toy+spread-toy", data=tmp_path / "data", examples=0, progress=False)
    result = evaluate(settings, steps=[step])  # a fusion without --batch-size (once a crash)
    metrics = result.categories[0].runs[0].metrics
    assert metrics["verdict_fallback"] == 0.0 and metrics["verdict_threshold"] is not None
    assert metrics["verdict_accuracy"] is not None and metrics["verdict_fit_seconds"] >= 0
    assert len(step.heldout_margins) == 14
    for record in result.records:
        assert record.extra["verdict"] == "anomalous" or not record.anomalous
        assert record.extra["verdict_source"] in ("expert", "lmm", "both")
