"""Calibration: the documented rule, tested with two different experts."""

from __future__ import annotations

import types

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel

from myriad import hookimpl
from myriad.experts import Expert, Mode, Prediction

from myriad.calibration import DECISION_THRESHOLD, Calibrator, fit_calibrated, heldout_splits
from myriad.detector import Detector
from myriad.testing import synthetic_images


def test_rule_maps_floor_to_zero_threshold_to_half():
    cal = Calibrator(floor=2.0, threshold=6.0)
    assert cal.apply(2.0) == 0.0
    assert cal.apply(6.0) == pytest.approx(DECISION_THRESHOLD)
    assert cal.apply(10.0) == 1.0 and cal.apply(100.0) == 1.0 and cal.apply(-5.0) == 0.0
    assert cal.apply(np.array([[4.0]], np.float32)).dtype == np.float32
    assert cal.is_anomalous(6.1) and not cal.is_anomalous(6.0)


def test_round_trip_json(tmp_path):
    cal = Calibrator(floor=0.1, threshold=0.7, method="kfold-max(k=3)", num_normals=9)
    cal.save(tmp_path / "c.json")
    assert Calibrator.load(tmp_path / "c.json") == cal


def test_heldout_splits_cover_everything_once():
    splits = heldout_splits(10, 3, seed=1)
    held = sorted(i for _, h in splits for i in h)
    assert held == list(range(10))
    for fit, h in splits:
        assert not set(fit) & set(h) and len(fit) + len(h) == 10
    assert len(heldout_splits(2, 3)) == 2  # leave-one-out when n <= k


def test_threshold_is_max_of_heldout_normal_scores():
    seen_fit_sizes = []

    class MeanExpert(Expert):
        def __init__(self):
            super().__init__(None, Mode.ONE_CLASS)

        def _fit(self, images):
            seen_fit_sizes.append(len(images))
            self.mean = np.mean([i.mean() for i in images])

        def _predict(self, images):
            return [Prediction(np.full(i.shape[:2], abs(i.mean() - self.mean), np.float32), float(abs(i.mean() - self.mean))) for i in images]

    images = [np.full((4, 4, 3), v, np.uint8) for v in (10, 20, 30, 40, 50, 60)]
    expert, cal = fit_calibrated(MeanExpert, images, folds=3, seed=0)
    assert seen_fit_sizes == [6, 4, 4, 4]  # the final fit; no leave-one-out offered, so three folds
    assert expert.mean == pytest.approx(35.0)
    assert cal.threshold > 0 and cal.method.startswith("kfold-max")
    assert cal.num_normals == 6
    assert len(cal.heldout) == 6 and cal.threshold == max(cal.heldout)  # kept in image order


class _LeaveOneOutMean(Expert):
    """Mean grey level; held-out score = distance to the mean of the *other* images of other groups."""

    def __init__(self, *_):
        super().__init__(None, Mode.ONE_CLASS)

    def _fit(self, images):
        self.values = [float(i.mean()) for i in images]
        self.mean = float(np.mean(self.values))

    def _predict(self, images):
        return [Prediction(np.full(i.shape[:2], abs(i.mean() - self.mean), np.float32), float(abs(i.mean() - self.mean))) for i in images]

    def heldout_predictions(self, images, groups=None):
        groups = list(range(len(images))) if groups is None else list(groups)
        out = []
        for i, image in enumerate(images):
            others = [v for v, g in zip(self.values, groups) if g != groups[i]]
            score = abs(float(image.mean()) - float(np.mean(others)))
            out.append(Prediction(np.full(image.shape[:2], score, np.float32), score))
        return out


def test_leave_one_out_scores_each_normal_against_all_the_others():
    images = [np.full((4, 4, 3), v, np.uint8) for v in (10, 20, 30, 40, 50, 60)]
    _, cal = fit_calibrated(_LeaveOneOutMean, images)
    expected = [abs(v - np.mean([w for w in (10, 20, 30, 40, 50, 60) if w != v])) for v in (10, 20, 30, 40, 50, 60)]
    assert cal.method == "leave-one-out(n=6)"
    assert cal.heldout == pytest.approx(expected)
    assert cal.threshold == pytest.approx(max(expected))
    assert cal.false_alarm_rate == pytest.approx(1 / 7)
    _, kfold = fit_calibrated(_LeaveOneOutMean, images, method="kfold")
    assert kfold.method.startswith("kfold-max")


def test_leave_one_out_refused_where_the_expert_cannot():
    from myriad.errors import ConfigError

    class NoLoo(_LeaveOneOutMean):
        def heldout_predictions(self, images, groups=None):
            return None

    images = [np.full((4, 4, 3), v, np.uint8) for v in (10, 20, 30)]
    with pytest.raises(ConfigError, match="'mean' cannot score its normal images leave-one-out"):
        fit_calibrated(NoLoo, images, method="leave-one-out", name="mean")
    with pytest.raises(ConfigError, match="calibration must be one of"):
        fit_calibrated(NoLoo, images, method="loo")


def test_calibration_round_trips_with_heldout_scores(tmp_path):
    from myriad.calibration import Calibrator

    cal = Calibrator.from_normal_outputs([1.0, 2.0, 3.0], [np.zeros((2, 2))])
    cal.save(tmp_path / "c.json")
    assert Calibrator.load(tmp_path / "c.json") == cal
    assert "heldout" not in cal.summary()


class _MedianConfig(BaseModel):
    scale: float = 1000.0


class _MedianDiffExpert(Expert):
    """A second, unrelated expert whose raw scores are in the thousands."""

    Config = _MedianConfig

    def __init__(self, config):
        super().__init__(config, Mode.FEW_SHOT)

    def _fit(self, images):
        self.median = np.median(np.stack([i[:48, :48].astype(np.float32) for i in images]), axis=0)

    def _predict(self, images):
        from myriad.images import resize_map

        out = []
        for image in images:
            small = np.asarray(Image.fromarray(image).resize((48, 48)), np.float32)
            diff = self.config.scale * np.abs(small - self.median).mean(-1)
            out.append(Prediction(resize_map(diff, *image.shape[:2]), float(diff.max())))
        return out


@pytest.fixture
def median_plugin(myriad_plugin):
    plugin = types.SimpleNamespace()

    @hookimpl
    def register_experts(register):
        register("median-diff", factory=_MedianDiffExpert, config=_MedianConfig, modes=["few_shot"], description="x")

    plugin.register_experts = register_experts
    myriad_plugin(plugin, name="median-diff")


@pytest.mark.parametrize("expert_name,config", [("colour-stats", {"size": 32}), ("median-diff", {})])
def test_calibrated_outputs_share_one_scale(expert_name, config, median_plugin):
    if expert_name == "colour-stats":
        pytest.importorskip("myriad_experts_tutorial")
    normal = synthetic_images(6, 48, seed=5)
    detector = Detector(expert_name, config).fit(normal)
    good = detector.detect(synthetic_images(3, 48, seed=6))
    bad = detector.detect(synthetic_images(3, 48, seed=7, defect=True))
    for det in good + bad:
        assert 0 <= det.score <= 1 and 0 <= det.anomaly_map.min() <= det.anomaly_map.max() <= 1
    assert min(d.score for d in bad) > max(d.score for d in good)
    assert all(d.anomalous for d in bad)
    assert not any(d.anomalous for d in good)


def test_held_out_predictions_keep_the_contract():
    from myriad.errors import ContractError

    class Broken(_LeaveOneOutMean):
        def heldout_predictions(self, images, groups=None):
            return [Prediction(np.full((2, 2), np.nan, np.float32), 0.0) for _ in images]

    images = [np.full((4, 4, 3), v, np.uint8) for v in (10, 20, 30)]
    with pytest.raises(ContractError, match="anomaly_map has shape"):
        fit_calibrated(Broken, images)
