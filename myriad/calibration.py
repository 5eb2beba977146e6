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
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from myriad.errors import ConfigError, MyriadError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from myriad.experts import Expert

#: The calibrated decision threshold (fixed for every expert).
DECISION_THRESHOLD = 0.5


@dataclass(frozen=True)
class Calibrator:
    """Affine map of raw expert outputs onto [0, 1] with the decision threshold at 0.5."""

    floor: float
    threshold: float
    method: str = "kfold-max"
    num_normals: int = 0

    def __post_init__(self) -> None:
        import math

        if not (math.isfinite(self.floor) and math.isfinite(self.threshold)):
            raise MyriadError(f"calibration got non-finite values: floor={self.floor}, threshold={self.threshold}")

    @property
    def span(self) -> float:
        """``threshold - floor``, kept positive so the map is always increasing."""
        return max(self.threshold - self.floor, 1e-12 * max(1.0, abs(self.threshold)), 1e-12)

    def apply(self, values: "np.ndarray | float") -> "np.ndarray | float":
        """Calibrate a raw map (any shape) or a raw score."""
        import numpy as np

        out = np.clip(0.5 * (np.asarray(values, dtype=np.float64) - self.floor) / self.span, 0.0, 1.0)
        if np.ndim(values) == 0:
            return float(out)
        return out.astype(np.float32)

    def is_anomalous(self, raw_score: float) -> bool:
        """Decision on a raw image score (same as ``apply(score) > 0.5``)."""
        return raw_score > self.threshold

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Calibrator":
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(**data)
        except TypeError as exc:
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

    @classmethod
    def from_normal_outputs(
        cls, scores: Sequence[float], maps: Sequence["np.ndarray"], method: str = "kfold-max"
    ) -> "Calibrator":
        """Build from held-out normal image scores and maps (see the module docstring)."""
        import numpy as np

        if len(scores) == 0:
            raise MyriadError("calibration needs at least one held-out normal score")
        flat = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in maps]) if maps else np.zeros(1)
        floor = float(np.median(flat))
        threshold = float(np.max(scores))
        return cls(floor=min(floor, threshold), threshold=threshold, method=method, num_normals=len(scores))


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


def fit_calibrated(
    make_expert: Callable[[], "Expert"],
    normal_images: Sequence["np.ndarray"],
    folds: int = 3,
    seed: int = 0,
) -> tuple["Expert", Calibrator]:
    """Fit an expert on all normal images and calibrate it on held-out normals.

    ``make_expert`` builds a fresh, unfitted expert with the wanted config. For
    zero-shot experts the normal images are scored directly (they never saw them).
    For fitted experts, each of ``folds`` copies fits on the other folds and scores
    its held-out fold; a single reference is calibrated on its mirror images.
    """
    import numpy as np

    from myriad.images import check_batch

    images = check_batch(normal_images, what="normal images")
    expert = make_expert()
    if not expert.needs_fit:
        preds = expert.predict(images)
        calibrator = Calibrator.from_normal_outputs(
            [p.score for p in preds], [p.anomaly_map for p in preds], method="zero-shot-normals"
        )
        return expert, calibrator

    scores: list[float] = []
    maps: list[np.ndarray] = []
    if len(images) == 1:
        mirrored = [np.ascontiguousarray(images[0][:, ::-1]), np.ascontiguousarray(images[0][::-1, :])]
        expert.fit(images)
        preds = expert.predict(mirrored)
        method = "mirror"
    else:
        for fit_idx, held_idx in heldout_splits(len(images), folds, seed):
            fold_expert = make_expert()
            fold_expert.fit([images[i] for i in fit_idx])
            held = fold_expert.predict([images[i] for i in held_idx])
            scores += [p.score for p in held]
            maps += [p.anomaly_map for p in held]
        expert.fit(images)
        preds = []
        method = f"kfold-max(k={min(folds, len(images))})"
    scores += [p.score for p in preds]
    maps += [p.anomaly_map for p in preds]
    return expert, Calibrator.from_normal_outputs(scores, maps, method=method)
