"""In-batch calibration with control normals for transductive experts (see myriad/calibration.py).

Two toy transductive experts model how a batch-dependent expert (MuSc) breaks a threshold fixed
on a batch of normal images, when the test batch is mostly anomalous:

- ``toy-offset``: each score includes an offset from the OTHER images of the batch, so normal images
  score higher in a mostly anomalous batch (false alarms with a fixed threshold);
- ``toy-minmax``: scores are min-max normalised over the batch (as MuSc's RsCIN does), so the worst
  normal calibration image sits at 1.0 and no anomaly can exceed it (misses with a fixed threshold).

With control normals appended to every batch, both are decided correctly.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from pydantic import BaseModel

from myriad import hookimpl
from myriad.calibration import DEFAULT_CONTROLS, Calibrator
from myriad.detector import Detector
from myriad.errors import ConfigError
from myriad.experts import Expert, Mode, Prediction

SIZE = 16
#: every batch each toy expert's predict() was given, as a list of image counts
BATCH_SIZES: list[int] = []


def normal_image(value: float) -> np.ndarray:
    """A flat image of grey level ``value`` with a faint fixed ramp (no two pixels equal)."""
    ramp = np.linspace(-0.4, 0.4, SIZE * SIZE).reshape(SIZE, SIZE)
    return np.clip(np.repeat((value + ramp)[..., None], 3, axis=-1), 0, 255).round().astype(np.uint8)


def anomalous_image(value: float, patch: float) -> np.ndarray:
    """A normal image with a bright ``SIZE/4`` square of grey level ``patch``."""
    image = normal_image(value)
    s = SIZE // 4
    image[s : 2 * s, s : 2 * s] = int(patch)
    return image


def deviation_map(image: np.ndarray, centre: float) -> np.ndarray:
    return np.abs(image.astype(np.float32).mean(axis=-1) - np.float32(centre))


class _ToyConfig(BaseModel):
    mode: str = "zero_shot"


class _ToyBase(Expert):
    Config = _ToyConfig

    def __init__(self, config: _ToyConfig) -> None:
        super().__init__(config, config.mode)

    def _fit(self, images: list[np.ndarray]) -> None:
        pass


class OffsetExpert(_ToyBase):
    """Score = own deviation from grey 100 + half the mean deviation of the OTHER images of the batch."""

    transductive = True
    min_batch = 2

    def _predict(self, images: list[np.ndarray]) -> list[Prediction]:
        BATCH_SIZES.append(len(images))
        maps = [deviation_map(i, 100.0) for i in images]
        own = np.array([m.max() for m in maps], dtype=np.float64)
        out = []
        for i, m in enumerate(maps):
            offset = np.float32(0.5 * (own.sum() - own[i]) / (len(images) - 1))  # leave-one-out
            out.append(Prediction(m + offset, float(m.max() + offset)))
        return out


class MinMaxExpert(_ToyBase):
    """Map = deviation from the median grey of the OTHER images; score = map maximum, min-max over the batch."""

    transductive = True
    min_batch = 2

    def _predict(self, images: list[np.ndarray]) -> list[Prediction]:
        BATCH_SIZES.append(len(images))
        means = np.array([float(np.median(i)) for i in images])
        maps = [deviation_map(image, float(np.median(np.delete(means, k)))) for k, image in enumerate(images)]
        raw = np.array([m.max() for m in maps], dtype=np.float64)
        scores = (raw - raw.min()) / max(raw.max() - raw.min(), 1e-12)
        return [Prediction(m, float(s)) for m, s in zip(maps, scores)]


class PlainExpert(_ToyBase):
    """Not transductive: deviation from grey 100, image by image."""

    def _predict(self, images: list[np.ndarray]) -> list[Prediction]:
        BATCH_SIZES.append(len(images))
        maps = [deviation_map(i, 100.0) for i in images]
        return [Prediction(m, float(m.max())) for m in maps]


class FittedOffsetExpert(OffsetExpert):
    """A transductive expert that fits on the normal images (few-shot): no unseen controls exist."""


@pytest.fixture
def toys(myriad_plugin):
    plugin = types.SimpleNamespace()

    @hookimpl
    def register_experts(register):
        register("toy-offset", factory=OffsetExpert, config=_ToyConfig, modes=["zero_shot"], description="x", transductive=True)
        register("toy-minmax", factory=MinMaxExpert, config=_ToyConfig, modes=["zero_shot"], description="x", transductive=True)
        register("toy-plain", factory=PlainExpert, config=_ToyConfig, modes=["zero_shot"], description="x")
        register(
            "toy-fitted", factory=FittedOffsetExpert, config=_ToyConfig, modes=["few_shot"], description="x", transductive=True
        )

    plugin.register_experts = register_experts
    myriad_plugin(plugin, name="toy-transductive")
    BATCH_SIZES.clear()
    return plugin


def normals(n: int, low: float = 96.0, high: float = 104.0) -> list[np.ndarray]:
    return [normal_image(v) for v in np.linspace(low, high, n)]


def mostly_anomalous_batch() -> tuple[list[np.ndarray], np.ndarray]:
    """8 normal + 14 anomalous images (64 % anomalous, like the devset and MVTec AD test sets)."""
    good = normals(8, 97.0, 103.0)
    bad = [anomalous_image(v, p) for v, p in zip(np.linspace(97, 103, 14), np.linspace(180, 240, 14))]
    return good + bad, np.array([0] * 8 + [1] * 14)


@pytest.mark.parametrize("name", ["toy-offset", "toy-minmax"])
def test_fixed_calibration_fails_on_a_mostly_anomalous_batch(toys, name):
    """The problem: a threshold fixed on an all-normal batch does not transfer (controls=0)."""
    detector = Detector(name).fit(normals(16), controls=0)
    assert detector.controls == [] and not detector.uses_controls
    images, labels = mostly_anomalous_batch()
    decisions = np.array([d.anomalous for d in detector.detect(images)])
    assert (decisions == labels).mean() < 0.7


@pytest.mark.parametrize("name", ["toy-offset", "toy-minmax"])
def test_in_batch_controls_decide_a_mostly_anomalous_batch(toys, name):
    detector = Detector(name).fit(normals(16))
    assert len(detector.controls) == 16 and detector.uses_controls
    images, labels = mostly_anomalous_batch()
    detections = detector.detect(images)
    decisions = np.array([d.anomalous for d in detections])
    np.testing.assert_array_equal(decisions, labels.astype(bool))
    for det, label in zip(detections, labels):
        assert 0.0 <= det.score <= 1.0 and (det.score > 0.5) == bool(label)
        assert 0.0 <= det.anomaly_map.min() and det.anomaly_map.max() <= 1.0
        if label:  # the defect's pixels are above the threshold on the calibrated map, the rest below
            s = SIZE // 4
            assert det.anomaly_map[s : 2 * s, s : 2 * s].min() > 0.5 and det.anomaly_map[3 * s :].max() <= 0.5
        else:
            assert det.anomaly_map.max() <= 0.5
    assert detector.last_calibrator is not None and detector.last_calibrator.method.startswith("in-batch-controls(m=16")


def test_controls_are_scored_in_the_same_batch_and_set_the_threshold(toys):
    detector = Detector("toy-offset").fit(normals(20), seed=3)
    BATCH_SIZES.clear()
    images, _ = mostly_anomalous_batch()
    detections = detector.detect(images)
    assert BATCH_SIZES == [len(images) + DEFAULT_CONTROLS]  # one predict call: batch + controls
    # the threshold is the maximum control score inside that batch
    preds = detector.expert.predict(images + detector.controls)
    control_scores = [p.score for p in preds[len(images) :]]
    assert detector.last_calibrator.threshold == pytest.approx(max(control_scores))
    assert [d.raw_score for d in detections] == pytest.approx([p.score for p in preds[: len(images)]])


def test_control_count_default_cap_and_errors(toys):
    assert len(Detector("toy-offset").fit(normals(5)).controls) == 5  # fewer normals than the default: all
    assert len(Detector("toy-offset").fit(normals(30)).controls) == DEFAULT_CONTROLS
    assert len(Detector("toy-offset").fit(normals(30), controls=4).controls) == 4
    a = Detector("toy-offset").fit(normals(30), controls=4, seed=1).controls
    b = Detector("toy-offset").fit(normals(30), controls=4, seed=1).controls
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # a seeded, deterministic draw
    with pytest.raises(ConfigError, match="at least 2 control"):
        Detector("toy-offset").fit(normals(5), controls=1)
    with pytest.raises(ConfigError, match="negative"):
        Detector("toy-offset").fit(normals(5), controls=-1)


def test_a_single_image_can_be_inspected_with_controls(toys):
    detector = Detector("toy-minmax").fit(normals(8))
    (good,) = detector.detect([normal_image(100.0)])
    (bad,) = detector.detect([anomalous_image(100.0, 220)])
    assert not good.anomalous and bad.anomalous


def test_non_transductive_experts_keep_the_fixed_calibration(toys):
    detector = Detector("toy-plain").fit(normals(16))
    assert detector.controls == []
    fixed = detector.calibrator
    BATCH_SIZES.clear()
    images, _ = mostly_anomalous_batch()
    detections = detector.detect(images)
    assert BATCH_SIZES == [len(images)]  # nothing appended
    assert detector.calibrator is fixed and detector.last_calibrator is fixed
    for image, det in zip(images, detections):
        raw = deviation_map(image, 100.0)
        assert det.score == fixed.apply(float(raw.max())) and det.anomalous == (float(raw.max()) > fixed.threshold)
        np.testing.assert_array_equal(det.anomaly_map, fixed.apply(raw))


def test_fitted_transductive_experts_get_no_controls(toys):
    """Controls must be normals the expert did not fit on; a fitted expert keeps the k-fold calibration."""
    detector = Detector("toy-fitted", {"mode": "few_shot"}).fit(normals(6))
    assert detector.controls == [] and detector.calibrator.method.startswith("kfold-max")


def test_save_load_keeps_the_controls(toys, tmp_path):
    detector = Detector("toy-minmax").fit(normals(12), controls=6)
    detector.save(tmp_path / "det")
    reloaded = Detector.load(tmp_path / "det")
    assert len(reloaded.controls) == 6
    assert all(np.array_equal(x, y) and y.dtype == np.uint8 for x, y in zip(detector.controls, reloaded.controls))
    images, _ = mostly_anomalous_batch()
    for a, b in zip(detector.detect(images), reloaded.detect(images)):
        assert a.score == b.score and a.anomalous == b.anomalous
    assert reloaded.last_calibrator == detector.last_calibrator


def test_from_controls_rule():
    maps = [np.array([[0.2, 0.3], [0.4, 0.9]], np.float32), np.array([[0.1, 0.3], [0.3, 0.6]], np.float32)]
    # scores on the map's scale (map maxima): floor = median pixel, map scale = score scale
    cal = Calibrator.from_controls([0.9, 0.6], maps)
    assert cal.threshold == pytest.approx(0.9) and cal.floor == pytest.approx(0.3)
    assert cal.map_floor == pytest.approx(0.3) and cal.map_threshold == pytest.approx(0.9)
    assert cal.apply_map(np.array([0.9], np.float32))[0] == pytest.approx(0.5)
    # scores on their own scale (batch-normalised, below the pixels): floor = lowest control score
    cal = Calibrator.from_controls([0.05, 0.2], maps)
    assert cal.threshold == pytest.approx(0.2) and cal.floor == pytest.approx(0.05)
    assert cal.apply(0.2) == pytest.approx(0.5) and cal.apply(0.05) == 0.0
    assert cal.apply_map(np.array([0.3, 0.9], np.float32)) == pytest.approx([0.0, 0.5])
    with pytest.raises(Exception, match="at least 2 control"):
        Calibrator.from_controls([0.1], maps[:1])


def test_map_scale_round_trips_and_is_omitted_when_unset(tmp_path):
    fixed = Calibrator(floor=0.1, threshold=0.7, method="kfold-max(k=3)", num_normals=9)
    assert set(fixed.to_dict()) == {"floor", "threshold", "method", "num_normals"}  # reports unchanged
    assert fixed.apply_map(np.array([0.7], np.float32))[0] == pytest.approx(0.5)
    batch = Calibrator(floor=0.0, threshold=0.2, method="in-batch-controls", num_normals=4, map_floor=0.3, map_threshold=0.9)
    batch.save(tmp_path / "c.json")
    assert Calibrator.load(tmp_path / "c.json") == batch
    with pytest.raises(Exception, match="together"):
        Calibrator(floor=0.0, threshold=1.0, map_floor=0.5)


def _write_category(root, normal_count: int, test_normals: int, test_anomalous: int) -> None:
    from PIL import Image

    for folder, images in (
        ("train/good", normals(normal_count)),
        ("test/good", normals(test_normals, 98.0, 102.0)),
        ("test/patch", [anomalous_image(100.0, 200.0 + i) for i in range(test_anomalous)]),
    ):
        path = root / "toy" / folder
        path.mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(path / f"{i:03d}.png")


@pytest.mark.parametrize("batch_size, calls", [(None, [10 + DEFAULT_CONTROLS]), (4, [4 + DEFAULT_CONTROLS] * 2 + [2 + DEFAULT_CONTROLS])])
def test_eval_scores_a_transductive_experts_whole_test_split_in_one_batch(toys, tmp_path, batch_size, calls):
    """`myriad eval` gives a transductive expert the whole test split (its scores compare each image
    with the others of its batch); an explicit --batch-size still splits it."""
    from myriad.evaluation.runner import EvalSettings, evaluate

    _write_category(tmp_path, 20, 6, 4)
    settings = EvalSettings(expert="toy-minmax", data=tmp_path, batch_size=batch_size, examples=0, progress=False)
    BATCH_SIZES.clear()
    result = evaluate(settings)
    detect_calls = BATCH_SIZES[-len(calls):]
    assert detect_calls == calls
    assert len(result.records) == 10
