"""A calibrated expert: the unit that ``myriad inspect``, ``eval`` and the LMM use.

A :class:`Detector` wraps one expert and its :class:`~myriad.calibration.Calibrator`
and returns both raw and calibrated outputs with a decision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from myriad.calibration import DECISION_THRESHOLD, Calibrator, fit_calibrated
from myriad.errors import ExpertStateError, WeightsError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from myriad.experts import Expert


@dataclass(frozen=True)
class Detection:
    """One image: raw and calibrated map/score, and the expert's decision."""

    raw_map: "np.ndarray"
    raw_score: float
    anomaly_map: "np.ndarray"  # calibrated, [0, 1], threshold 0.5
    score: float  # calibrated
    anomalous: bool

    threshold: float = DECISION_THRESHOLD


class Detector:
    """An expert plus its calibration."""

    def __init__(self, expert_name: str, config: Any = None, **overrides: Any) -> None:
        from myriad.plugins import get_expert

        self.expert_name = expert_name
        self.expert: "Expert" = get_expert(expert_name, config, **overrides)
        self.calibrator: Calibrator | None = None

    @property
    def mode(self) -> str:
        """The active expert's mode (``zero_shot``, ``few_shot`` or ``one_class``)."""
        return self.expert.mode.value

    def fit(self, normal_images: Sequence["np.ndarray"], folds: int = 3, seed: int = 0) -> "Detector":
        """Fit the expert on normal images and calibrate it (see :mod:`myriad.calibration`)."""
        from myriad.plugins import get_expert

        config = self.expert.config
        self.expert, self.calibrator = fit_calibrated(
            lambda: get_expert(self.expert_name, config), normal_images, folds=folds, seed=seed
        )
        return self

    def detect(self, images: Sequence["np.ndarray"]) -> list[Detection]:
        """Score images; maps are at each image's resolution."""
        if self.calibrator is None:
            if self.expert.needs_fit:
                raise ExpertStateError(f"detector for {self.expert_name!r} must be fitted before detect()")
            self.calibrator = Calibrator.identity()
        out = []
        for pred in self.expert.predict(images):
            out.append(
                Detection(
                    raw_map=pred.anomaly_map,
                    raw_score=float(pred.score),
                    anomaly_map=self.calibrator.apply(pred.anomaly_map),  # type: ignore[arg-type]
                    score=float(self.calibrator.apply(pred.score)),
                    anomalous=bool(self.calibrator.is_anomalous(pred.score)),
                )
            )
        return out

    def save(self, directory: str | Path) -> Path:
        """Save expert state, calibration and the expert name to ``directory``."""
        from myriad.io import atomic_write_text

        directory = Path(directory)
        self.expert.save(directory / "expert")
        if self.calibrator is not None:
            self.calibrator.save(directory / "calibration.json")
        atomic_write_text(directory / "detector.json", json.dumps({"expert": self.expert_name}, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Detector":
        """Load a detector saved with :meth:`save` (its expert plugin must be installed)."""
        from myriad.experts import Expert
        from myriad.plugins import get_expert_info

        directory = Path(directory)
        meta = directory / "detector.json"
        if not meta.is_file():
            raise WeightsError(f"{directory}: not a saved detector (missing detector.json)")
        name = json.loads(meta.read_text())["expert"]
        info = get_expert_info(name)
        expert_cls = info.load_factory()
        loader = expert_cls.load if isinstance(expert_cls, type) and issubclass(expert_cls, Expert) else Expert.load
        detector = cls.__new__(cls)
        detector.expert_name = name
        detector.expert = loader(directory / "expert")
        calib = directory / "calibration.json"
        detector.calibrator = Calibrator.load(calib) if calib.is_file() else None
        return detector
