"""A target false-alarm rate: empirical quantile or exponential tail fit on held-out normals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from myriad.calibration import Calibrator, check_false_alarm_rate, tail_threshold
from myriad.errors import ConfigError


def test_empirical_quantile_where_enough_normals_lie_above():
    scores = np.random.default_rng(0).uniform(0, 1, 1000)
    assert tail_threshold(scores, 0.05) == pytest.approx(0.95, abs=0.02)


def test_exponential_tail_extrapolates_past_the_largest_normal():
    rng = np.random.default_rng(1)
    estimates = [tail_threshold(rng.exponential(1.0, 200), 0.001) for _ in range(20)]
    # true 0.999 quantile of Exp(1) is ln(1000) = 6.91; the largest of 200 is ~5.9
    assert np.median(estimates) == pytest.approx(math.log(1000), rel=0.15)
    observed = np.mean([np.mean(rng.exponential(1.0, 20000) > t) for t in estimates])
    assert 0.0003 < observed < 0.003


def test_too_few_normals_or_a_bad_rate_are_refused():
    with pytest.raises(ConfigError, match="at least 10 held-out normal"):
        tail_threshold([0.1, 0.2, 0.3], 0.01)
    for bad in (0, -0.1, 0.5, 2, float("nan")):
        with pytest.raises(ConfigError, match="false_alarm_rate"):
            check_false_alarm_rate(bad)
    assert check_false_alarm_rate(None) is None


def test_calibrator_records_the_rate_and_lowers_the_threshold():
    scores = list(np.random.default_rng(2).normal(1.0, 0.1, 300))
    maps = [np.full((4, 4), s, np.float32) for s in scores]
    paper = Calibrator.from_normal_outputs(scores, maps)
    tail = Calibrator.from_normal_outputs(scores, maps, false_alarm_rate=0.05)
    assert paper.threshold == pytest.approx(max(scores))
    assert tail.threshold < paper.threshold and "false-alarm-rate=0.05" in tail.method
    assert np.mean(np.array(scores) > tail.threshold) == pytest.approx(0.05, abs=0.01)


def test_transductive_zero_shot_experts_keep_their_control_rule(myriad_plugin):
    import types

    from myriad.detector import Detector
    from myriad.hookspecs import hookimpl
    from myriad.testing import constant_expert, synthetic_images

    class BatchConstant(constant_expert()):
        transductive = True

    @hookimpl
    def register_experts(register):
        register("constant-batch", factory=BatchConstant, config=BatchConstant.Config, modes=["zero_shot"],
                 description="toy", transductive=True)

    myriad_plugin(types.SimpleNamespace(register_experts=register_experts), name="batch-toy")
    with pytest.raises(ConfigError, match="control normals"):
        Detector("constant-batch").fit(synthetic_images(12, 32), false_alarm_rate=0.01)


def test_expected_false_alarm_rate_of_each_calibration():
    """What ``Calibrator.false_alarm_rate`` reports: 1/(n+1) for the paper's maximum over n held-out normals,
    one normal for a mirror calibration, the target where one was set, unknown for the identity."""
    from myriad.calibration import combined_false_alarm_rate, paper_false_alarm_rate

    scores = list(np.random.default_rng(3).normal(1.0, 0.1, 99))
    maps = [np.full((4, 4), s, np.float32) for s in scores]
    assert Calibrator.from_normal_outputs(scores, maps).false_alarm_rate == pytest.approx(0.01)
    assert Calibrator.from_normal_outputs(scores[:2], maps[:2], "mirror").false_alarm_rate == pytest.approx(0.5)
    assert Calibrator.from_normal_outputs(scores, maps, false_alarm_rate=0.05).false_alarm_rate == pytest.approx(0.05)
    assert Calibrator.from_controls(scores[:16], maps[:16]).false_alarm_rate == pytest.approx(1 / 17)
    assert Calibrator.identity().false_alarm_rate is None
    assert paper_false_alarm_rate(4) == pytest.approx(0.2)
    assert combined_false_alarm_rate([0.2, 0.2]) == pytest.approx(0.36)
    assert combined_false_alarm_rate([0.2, None]) is None  # a member of unknown rate
    restored = Calibrator.from_dict(Calibrator.from_normal_outputs(scores[:7], maps[:7]).to_dict())
    assert restored.false_alarm_rate == pytest.approx(1 / 8)


def test_detections_carry_their_calibrations_rate(myriad_plugin):
    """A detector fitted on n normals reports 1/(n+1) on every detection (k folds hold each normal out once)."""
    from myriad.detector import Detector
    from myriad.testing import synthetic_images

    images = synthetic_images(9, 32)
    detector = Detector("patchcore", {"mode": "one_class"}).fit(images)
    assert detector.false_alarm_rate == pytest.approx(0.1)
    assert [d.false_alarm_rate for d in detector.detect(images[:2])] == pytest.approx([0.1, 0.1])
    assert Detector("patchcore", {"mode": "few_shot"}).false_alarm_rate is None  # not fitted: unknown
