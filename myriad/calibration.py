"""Calibration: one documented scale for every expert's maps and scores.

Raw expert outputs live on scales of their own (squared feature distances for
PatchCore, probabilities for CLIP-based experts, ...). The host maps them onto a
common scale so that any expert can feed the LMM without retraining:

    calibrated(x) = clip(0.5 * (x - floor) / (threshold - floor), 0, 1)

- ``threshold`` is the conventional accuracy threshold of the Myriad paper: the
  maximum image score of normal images that the expert did *not* fit on, collected
  over k folds of the normal images (k = 3 by default; leave-one-out when fewer
  images are given; with a single reference, its mirror images serve as held-out
  normals).
- ``floor`` is the median pixel value of those held-out normal maps: typical
  normal texture maps to 0.

So 0 is "typical normal", **0.5 is the decision threshold** (an image is
anomalous when its calibrated score exceeds 0.5) and 1 is "as far above the
threshold as the threshold is above normal", clipped. The same affine map is
applied to the map and the score, so a pixel above 0.5 is as anomalous as the
worst held-out normal image.

**Transductive experts: in-batch calibration with control normals.** An expert
that scores a batch jointly (MuSc: every image against the others of its batch,
then a min-max over the batch) has no fixed scale: the same normal image scores
differently in an all-normal calibration batch and in a test batch that is mostly
anomalous (MVTec AD test sets are ~70 % anomalous). So a threshold fixed at fit
time does not transfer. When such an expert did not fit on the normal images
(zero-shot), :class:`~myriad.detector.Detector` keeps ``m`` of them as *control
normals* (``m = 16`` by default, a seeded draw; all of them when fewer), appends
them to every batch it scores, and re-derives the calibration from how the
controls score *inside that batch* (:meth:`Calibrator.from_controls`):

- ``threshold`` = the maximum control score (the paper's rule, applied to the
  controls in this batch);
- ``floor`` = the lower of the controls' median pixel and their lowest score: the
  median pixel, as above, when every control's score lies above it (scores that
  are map maxima of textured images); the lowest control score when the expert
  puts its scores on a scale of their own (MuSc's RsCIN min-max normalises them
  over the batch, far below its map values), so the floor stays below the
  threshold and a typical normal image still calibrates to about 0;
- maps get their own affine map (``map_floor`` = median control pixel,
  ``map_threshold`` = maximum control pixel), so a pixel above 0.5 is still as
  anomalous as the worst control; it equals the score's map when scores are map
  maxima.

Why it is valid: a transductive expert compares each image with the *other*
images of its batch (leave-one-out; MuSc sets an image's distance to itself to
infinity), so a control and a normal test image see the same kind of batch and
their scores are exchangeable when both come from the normal distribution. The
probability that a normal test image scores above the maximum of ``m`` controls
is then at most ``1 / (m + 1)`` (6 % for m = 16), whatever the batch's anomaly
fraction. The cost is scoring ``m`` more images per batch (MuSc's mutual scoring
is quadratic in the batch size). Non-transductive experts keep the fixed
calibration above, unchanged.

**A target false-alarm rate** (``false_alarm_rate=alpha``, ``--false-alarm-rate``)
replaces the maximum by an estimate of the held-out normals' ``1 - alpha``
quantile, for users who must trade misses against alarms: the empirical quantile
where the held-out normals hold at least :data:`TAIL_MIN` scores above it, otherwise
an exponential tail (peaks over a threshold, the generalised Pareto law with shape
0) fitted on the top :data:`TAIL_FRACTION` of the held-out scores and extrapolated
(:func:`tail_threshold`). It needs at least :data:`MIN_FAR_NORMALS` held-out normals;
the paper's maximum stays the default.

Measured (MuSc zero-shot on the development set, 64 % of each test batch
anomalous; docs/concepts.md): expert accuracy 0.415 with the fixed threshold
(62 of 66 anomalies missed) -> 0.855 with 16 controls (3 of 40 normals flagged,
12 anomalies missed); image AUROC 0.918 -> 0.913; 179 -> 408 ms/image.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from myriad.errors import ConfigError, MyriadError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from myriad.experts import Expert, Prediction

#: The calibrated decision threshold (fixed for every expert).
DECISION_THRESHOLD = 0.5

#: Control normals a :class:`~myriad.detector.Detector` adds to each batch of a transductive expert.
DEFAULT_CONTROLS = 16
#: Fewest control normals that define an in-batch calibration (a maximum and a lower floor).
MIN_CONTROLS = 2
#: Fewest held-out normal scores from which a target false-alarm rate is estimated.
MIN_FAR_NORMALS = 10
#: Fraction of the held-out scores (at least :data:`TAIL_MIN`) the exponential tail is fitted on.
TAIL_FRACTION = 0.2
#: Held-out scores above a quantile for the empirical quantile to be used instead of the tail fit.
TAIL_MIN = 5


def paper_false_alarm_rate(num_normals: int) -> float:
    """Expected false-alarm rate of the paper's threshold (the maximum of ``num_normals`` held-out normal
    scores): a new normal image scores above all of them with probability ``1 / (num_normals + 1)``."""
    return 1.0 / (max(int(num_normals), 1) + 1)


def combined_false_alarm_rate(rates: Sequence[float | None]) -> float | None:
    """False-alarm rate of a fusion that alarms when any member does, members taken as independent;
    None when a member's rate is unknown."""
    import math

    if any(r is None for r in rates):
        return None
    return 1.0 - math.prod(1.0 - r for r in rates)  # type: ignore[operator]


def check_false_alarm_rate(rate: float | None) -> float | None:
    """Validate a target false-alarm rate (None: the paper's maximum rule); returns it."""
    import math

    if rate is not None and not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0.0 < rate < 0.5):
        raise ConfigError(f"false_alarm_rate must be a number in (0, 0.5), e.g. 0.01; got {rate!r}")
    return None if rate is None else float(rate)


def tail_threshold(scores: Sequence[float], rate: float) -> float:
    """A threshold that held-out normal ``scores`` exceed with probability about ``rate``.

    Empirical ``1 - rate`` quantile when at least :data:`TAIL_MIN` scores lie above it;
    otherwise an exponential tail: with ``u`` the ``(k+1)``-th largest score
    (``k = max(TAIL_MIN, TAIL_FRACTION * n)``) and ``beta`` the mean excess of the top
    ``k`` over ``u``, ``P(S > u + x) ~ (k / n) exp(-x / beta)``, so the threshold is
    ``u + beta * ln(k / (n * rate))``.
    """
    import math

    import numpy as np

    check_false_alarm_rate(rate)
    values = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(values)
    if n < MIN_FAR_NORMALS:
        raise ConfigError(
            f"a target false-alarm rate needs at least {MIN_FAR_NORMALS} held-out normal scores, got {n}: "
            "give more normal images, or use the default (maximum) threshold"
        )
    if rate * n >= TAIL_MIN:
        return float(np.quantile(values, 1.0 - rate))
    k = min(n - 1, max(TAIL_MIN, math.ceil(TAIL_FRACTION * n)))
    u = float(values[n - k - 1])
    beta = float(np.mean(values[n - k :] - u))
    return u + beta * math.log(k / (n * rate))


@dataclass(frozen=True)
class Calibrator:
    """Affine map of raw expert outputs onto [0, 1] with the decision threshold at 0.5."""

    floor: float
    threshold: float
    method: str = "kfold-max"
    num_normals: int = 0
    #: Separate affine map for anomaly maps (in-batch control calibration); None: maps use floor/threshold.
    map_floor: float | None = None
    map_threshold: float | None = None
    #: the held-out normals' raw scores, one per normal image in image order (None where not kept):
    #: what a fusion normalises its members by (:mod:`myriad.fusion`)
    heldout: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        import math

        values = [self.floor, self.threshold] + [v for v in (self.map_floor, self.map_threshold) if v is not None]
        if not all(math.isfinite(v) for v in values):
            raise MyriadError(
                f"calibration got non-finite values: floor={self.floor}, threshold={self.threshold}, "
                f"map_floor={self.map_floor}, map_threshold={self.map_threshold}"
            )
        if (self.map_floor is None) != (self.map_threshold is None):
            raise MyriadError("calibration: map_floor and map_threshold must be given together")

    @property
    def span(self) -> float:
        """``threshold - floor``, kept positive so the map is always increasing."""
        return _positive_span(self.floor, self.threshold)

    def apply(self, values: "np.ndarray | float") -> "np.ndarray | float":
        """Calibrate a raw score (or any array on the score's scale)."""
        return _affine(values, self.floor, self.span)

    def apply_map(self, values: "np.ndarray") -> "np.ndarray":
        """Calibrate a raw anomaly map: :meth:`apply`, unless a separate map scale is set."""
        if self.map_floor is None or self.map_threshold is None:
            return self.apply(values)  # type: ignore[return-value]
        span = _positive_span(self.map_floor, self.map_threshold)
        return _affine(values, self.map_floor, span)  # type: ignore[return-value]

    @property
    def false_alarm_rate(self) -> float | None:
        """The expected share of normal images this calibration flags (None for ``identity``: unknown).

        The paper's threshold over ``n`` held-out normals (k folds, in-batch controls, a zero-shot
        expert's normals): ``1 / (n + 1)``; a single reference calibrated on its mirror images counts
        as one normal (1/2); a target rate (``false-alarm-rate=`` in ``method``): that rate.
        """
        if self.method == "identity" or self.num_normals <= 0:
            return None
        if "false-alarm-rate=" in self.method:
            return float(self.method.rsplit("false-alarm-rate=", 1)[1].split(",")[0].rstrip(")"))
        return paper_false_alarm_rate(1 if self.method.startswith("mirror") else self.num_normals)

    def is_anomalous(self, raw_score: float) -> bool:
        """Decision on a raw image score (same as ``apply(score) > 0.5``)."""
        return raw_score > self.threshold

    def to_dict(self) -> dict:
        """JSON-serialisable form (the map scale only when it is set)."""
        data = asdict(self)
        if self.map_floor is None:
            del data["map_floor"], data["map_threshold"]
        if self.heldout is None:
            del data["heldout"]
        else:
            data["heldout"] = list(self.heldout)
        return data

    def summary(self) -> dict:
        """:meth:`to_dict` without the held-out scores (for records written per image)."""
        data = self.to_dict()
        data.pop("heldout", None)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Calibrator":
        """Inverse of :meth:`to_dict`."""
        try:
            data = dict(data)
            if data.get("heldout") is not None:
                data["heldout"] = tuple(float(v) for v in data["heldout"])
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise MyriadError(f"invalid calibration record {data!r}: {exc}") from exc

    def save(self, path: str | Path) -> None:
        """Write as JSON (atomically)."""
        from myriad.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Calibrator":
        """Read a calibration written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise MyriadError(f"{path}: calibration file not found")
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def identity(cls) -> "Calibrator":
        """For experts whose raw outputs are already probabilities in [0, 1]: x -> x."""
        return cls(floor=0.0, threshold=0.5, method="identity")

    def scale(self, values: "np.ndarray | float") -> "np.ndarray | float":
        """:meth:`apply` without the clipping to [0, 1]: the calibrated scale extended, for ranking and fusion."""
        import numpy as np

        out = 0.5 * (np.asarray(values, dtype=np.float64) - self.floor) / self.span
        return float(out) if np.ndim(values) == 0 else out.astype(np.float32)

    def scale_map(self, values: "np.ndarray") -> "np.ndarray":
        """:meth:`apply_map` without the clipping to [0, 1] (float32)."""
        import numpy as np

        if self.map_floor is None or self.map_threshold is None:
            return self.scale(values)  # type: ignore[return-value]
        span = _positive_span(self.map_floor, self.map_threshold)
        return (0.5 * (np.asarray(values, dtype=np.float64) - self.map_floor) / span).astype(np.float32)

    @classmethod
    def from_normal_outputs(
        cls,
        scores: Sequence[float],
        maps: Sequence["np.ndarray"],
        method: str = "kfold-max",
        false_alarm_rate: float | None = None,
        keep_scores: bool = True,
    ) -> "Calibrator":
        """Build from held-out normal image scores and maps (see the module docstring).

        ``false_alarm_rate``: None for the paper's threshold (maximum held-out score), else the
        threshold of :func:`tail_threshold` (and ``method`` records the rate). ``keep_scores``:
        keep the scores (:attr:`heldout`).
        """
        import numpy as np

        if len(scores) == 0:
            raise MyriadError("calibration needs at least one held-out normal score")
        flat = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in maps]) if maps else np.zeros(1)
        floor = float(np.median(flat))
        if false_alarm_rate is None:
            threshold = float(np.max(scores))
        else:
            threshold = tail_threshold(scores, false_alarm_rate)
            method = f"{method},false-alarm-rate={false_alarm_rate:g}"
        heldout = tuple(float(v) for v in scores) if keep_scores else None
        return cls(floor=min(floor, threshold), threshold=threshold, method=method, num_normals=len(scores), heldout=heldout)

    @classmethod
    def from_controls(
        cls, scores: Sequence[float], maps: Sequence["np.ndarray"], method: str = "in-batch-controls"
    ) -> "Calibrator":
        """In-batch calibration from control normals scored inside a test batch (see the module docstring).

        ``threshold`` = max control score; ``floor`` = min(median control pixel, min control score);
        maps: ``map_floor`` = median control pixel, ``map_threshold`` = max control pixel.
        """
        import numpy as np

        if len(scores) < MIN_CONTROLS or len(maps) != len(scores):
            raise MyriadError(
                f"in-batch calibration needs at least {MIN_CONTROLS} control scores and one map per score, "
                f"got {len(scores)} scores and {len(maps)} maps"
            )
        flat = np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in maps])
        pixel_median, pixel_max = float(np.median(flat)), float(np.max(flat))
        threshold = float(np.max(scores))
        floor = min(pixel_median, float(np.min(scores)), threshold)
        return cls(
            floor=floor,
            threshold=threshold,
            method=method,
            num_normals=len(scores),
            map_floor=min(pixel_median, pixel_max),
            map_threshold=pixel_max,
        )


def _positive_span(floor: float, threshold: float) -> float:
    """``threshold - floor``, kept positive so the affine map is always increasing."""
    return max(threshold - floor, 1e-12 * max(1.0, abs(threshold)), 1e-12)


def _affine(values: "np.ndarray | float", floor: float, span: float) -> "np.ndarray | float":
    """``clip(0.5 * (values - floor) / span, 0, 1)``: float for a scalar, float32 for an array."""
    import numpy as np

    out = np.clip(0.5 * (np.asarray(values, dtype=np.float64) - floor) / span, 0.0, 1.0)
    if np.ndim(values) == 0:
        return float(out)
    return out.astype(np.float32)


def heldout_splits(n: int, folds: int = 3, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """k-fold (fit, held-out) index splits of ``n`` normal images; leave-one-out when n <= folds."""
    import numpy as np

    if n < 2:
        raise ConfigError("k-fold calibration needs at least 2 normal images")
    folds = min(folds, n)
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, folds)
    return [
        (sorted(int(i) for j, p in enumerate(parts) if j != k for i in p), sorted(int(i) for i in part))
        for k, part in enumerate(parts)
    ]


#: How fitted experts are calibrated: ``auto`` (leave-one-out where the expert can, else k folds),
#: ``leave-one-out`` (refused for an expert that cannot) or ``kfold`` (the authors' and earlier releases').
CALIBRATION_METHODS = ("auto", "leave-one-out", "kfold")


def check_calibration_method(method: str) -> str:
    """Validate a calibration method name (one of :data:`CALIBRATION_METHODS`); returns it."""
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    return method


def fit_calibrated(
    make_expert: Callable[[], "Expert"],
    normal_images: Sequence["np.ndarray"],
    folds: int = 3,
    seed: int = 0,
    false_alarm_rate: float | None = None,
    method: str = "auto",
    name: str = "",
    heldout: "list[Prediction] | None" = None,
) -> tuple["Expert", Calibrator]:
    """Fit an expert on all normal images and calibrate it on held-out normals.

    ``make_expert`` builds a fresh, unfitted expert with the wanted config. For
    zero-shot experts the normal images are scored directly (they never saw them).
    For fitted experts (``method``, :data:`CALIBRATION_METHODS`):

    - ``leave-one-out``: the expert fitted on all images scores each of them without
      what it learnt from that image (:meth:`~myriad.experts.Expert.heldout_predictions`),
      so a held-out normal is scored as a test image is, against everything else;
    - ``kfold``: each of ``folds`` copies fits on the other folds and scores its held-out
      fold (the authors' rule; a copy that fits on two thirds of the images scores its
      normals higher than the full expert scores new ones, so the threshold is too high);
    - ``auto`` (default): leave-one-out where the expert offers it, else k folds.

    A single reference is calibrated on its mirror images. ``false_alarm_rate``: see
    :meth:`Calibrator.from_normal_outputs`. The held-out scores are kept in image order
    (:attr:`Calibrator.heldout`). ``heldout``: a list that receives the held-out predictions in
    image order (maps included, e.g. to calibrate what reads them); left empty for a single
    reference, whose held-out normals are its mirror images rather than the image itself.
    """
    import numpy as np

    from myriad.images import check_batch

    check_calibration_method(method)
    images = check_batch(normal_images, what="normal images")
    expert = make_expert()
    if not expert.needs_fit:
        preds = expert.predict(images)
        calibrator = Calibrator.from_normal_outputs(
            [p.score for p in preds], [p.anomaly_map for p in preds], "zero-shot-normals", false_alarm_rate
        )
        if heldout is not None:
            heldout.extend(preds)
        return expert, calibrator

    if len(images) == 1:
        mirrored = [np.ascontiguousarray(images[0][:, ::-1]), np.ascontiguousarray(images[0][::-1, :])]
        expert.fit(images)
        preds = expert.predict(mirrored)
        return expert, Calibrator.from_normal_outputs(
            [p.score for p in preds], [p.anomaly_map for p in preds], "mirror", false_alarm_rate
        )
    if method != "kfold":
        expert.fit(images)
        held = expert.heldout_predictions(images)
        if held is not None:
            from myriad.errors import ContractError

            if len(held) != len(images):
                raise ContractError(
                    f"expert {name or type(expert).__name__!r}: heldout_predictions returned {len(held)} results "
                    f"for {len(images)} images"
                )
            held = [expert._checked(p, image, i, len(images)) for i, (p, image) in enumerate(zip(held, images))]
            if heldout is not None:
                heldout.extend(held)
            return expert, Calibrator.from_normal_outputs(
                [p.score for p in held], [p.anomaly_map for p in held], f"leave-one-out(n={len(images)})", false_alarm_rate
            )
        if method == "leave-one-out":
            raise ConfigError(
                f"expert {name or type(expert).__name__!r} cannot score its normal images leave-one-out "
                "(calibration='leave-one-out'): use calibration 'kfold' or 'auto'"
            )
    scores: list[float] = [0.0] * len(images)
    maps: list[np.ndarray] = [np.zeros(1, np.float32)] * len(images)
    fold_preds: list[Any] = [None] * len(images)
    for fit_idx, held_idx in heldout_splits(len(images), folds, seed):
        fold_expert = make_expert()
        fold_expert.fit([images[i] for i in fit_idx])
        for i, pred in zip(held_idx, fold_expert.predict([images[i] for i in held_idx])):
            scores[i], maps[i] = pred.score, pred.anomaly_map
            fold_preds[i] = pred
    if heldout is not None:
        heldout.extend(fold_preds)
    if not expert.fitted:
        expert.fit(images)
    return expert, Calibrator.from_normal_outputs(scores, maps, f"kfold-max(k={min(folds, len(images))})", false_alarm_rate)
