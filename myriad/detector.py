"""A calibrated expert: the unit that ``myriad inspect``, ``eval`` and the LMM use.

A :class:`Detector` wraps one expert and its :class:`~myriad.calibration.Calibrator`
and returns both raw and calibrated outputs with a decision.

**Transductive experts** (``Expert.transductive``: scores depend on the batch, as
MuSc's) that did not fit on the normal images are calibrated *in each batch*:
:meth:`Detector.fit` keeps ``controls`` (16 by default) of the normal images as
control normals, and :meth:`Detector.detect` scores ``batch + controls`` in one
call and derives that batch's calibration from the controls' scores
(:meth:`myriad.calibration.Calibrator.from_controls`: threshold = max control
score). A fixed threshold would not transfer, because a normal image scores
differently in an all-normal batch and in a mostly anomalous one; the controls
score inside the same batch as the test images, so their maximum is the paper's
threshold for *this* batch. It also lets a transductive expert inspect a single
image. The cost is ``controls`` more images per batch. Other experts (and
``controls=0``) keep the fixed k-fold calibration, unchanged. The calibration of
the last batch is :attr:`Detector.last_calibrator`.

**Native resolution** (``tile``, see :mod:`myriad.tiling`): when the normal images
are large (``"auto"``: shorter side above 384 px) a non-transductive expert is fitted
and run on overlapping 256 px tiles, and maps are stitched back at full resolution.

**Several experts** are fused by :class:`myriad.fusion.FusedDetector`
(``make_detector("patchcore+global")``); each member is a :class:`Detector`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from myriad.calibration import (
    DECISION_THRESHOLD,
    DEFAULT_CONTROLS,
    MIN_CONTROLS,
    Calibrator,
    check_calibration_method,
    check_false_alarm_rate,
    fit_calibrated,
    paper_false_alarm_rate,
)
from myriad.errors import ConfigError, ExpertStateError, WeightsError
from myriad.tiling import DEFAULT_OVERLAP, Tiling, TiledExpert, plan_tiling

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from myriad.experts import Expert, Prediction


#: File of a saved detector's control normals (safetensors, one uint8 H x W x 3 tensor each).
CONTROLS_FILE = "controls.safetensors"

#: Longest side of the held-out normal maps a detector keeps when asked (``fit(keep_heldout=True)``):
#: enough for what reads them (the LMM sees 224 x 224 maps), small enough to keep hundreds.
HELDOUT_MAP_SIDE = 256


@dataclass(frozen=True)
class Detection:
    """One image: raw and calibrated map/score, and the expert's decision."""

    raw_map: "np.ndarray"
    raw_score: float
    anomaly_map: "np.ndarray"  # calibrated, [0, 1], threshold 0.5
    score: float  # calibrated
    anomalous: bool

    threshold: float = DECISION_THRESHOLD
    #: fused detections: each member's calibrated ``score`` and ``anomalous`` (None for one expert)
    members: dict[str, dict[str, Any]] | None = None
    #: fused detections: each member's calibrated map (None for one expert)
    member_maps: dict[str, "np.ndarray"] | None = field(default=None, repr=False)
    #: the expected share of normal images the calibration flags (:attr:`Calibrator.false_alarm_rate`;
    #: combined over a fusion's members); None where unknown
    false_alarm_rate: float | None = None


class Detector:
    """An expert plus its calibration (and, for large images, its tiling)."""

    def __init__(
        self,
        expert_name: str,
        config: Any = None,
        tile: int | str | None = "auto",
        tile_overlap: float = DEFAULT_OVERLAP,
        **overrides: Any,
    ) -> None:
        from myriad.plugins import get_expert

        self.expert_name = expert_name
        self.expert: "Expert" = get_expert(expert_name, config, **overrides)
        self.tile = tile
        self.tile_overlap = tile_overlap
        #: the tiling chosen at fit time (None: images go to the expert whole)
        self.tiling: Tiling | None = None
        #: fixed calibration from fit (for in-batch calibrated experts: the normals scored on their own)
        self.calibrator: Calibrator | None = None
        #: control normals appended to every batch of a transductive expert (empty: fixed calibration)
        self.controls: list["np.ndarray"] = []
        #: the calibration :meth:`detect` used for its last batch
        self.last_calibrator: Calibrator | None = None
        #: the normal images' held-out predictions (maps shrunk to :data:`HELDOUT_MAP_SIDE`), in image order,
        #: when fit was asked to keep them and the calibration scored each normal image itself
        self.heldout_predictions: list["Prediction"] | None = None

    @property
    def mode(self) -> str:
        """The active expert's mode (``zero_shot``, ``few_shot`` or ``one_class``)."""
        return self.expert.mode.value

    @property
    def min_batch(self) -> int:
        """Smallest batch :meth:`detect` accepts (a transductive expert's minimum, else 1)."""
        return type(self.expert).min_batch if self.expert.transductive else 1

    @property
    def base_expert(self) -> "Expert":
        """The plugin's expert (inside the tiling wrapper when tiled)."""
        return self.expert.inner if isinstance(self.expert, TiledExpert) else self.expert

    def resolved_config(self) -> dict[str, Any]:
        """The expert's full config (defaults filled in) as JSON values, plus the tiling in use."""
        config = self.base_expert.config.model_dump(mode="json")
        if self.tiling is not None:
            config["tiling"] = self.tiling.to_dict()
        return config

    def calibration_record(self) -> dict[str, Any]:
        """The fixed calibration as JSON, without the held-out scores (empty before fit)."""
        return self.calibrator.summary() if self.calibrator is not None else {}

    def batch_calibration_record(self) -> dict[str, Any] | None:
        """The in-batch calibration of the last :meth:`detect` call as JSON (None without controls)."""
        if not self.uses_controls or self.last_calibrator is None:
            return None
        return self.last_calibrator.summary()

    @property
    def uses_controls(self) -> bool:
        """Whether :meth:`detect` calibrates each batch with control normals (see the module docstring)."""
        return bool(self.controls)

    @property
    def false_alarm_rate(self) -> float | None:
        """The expected share of normal images flagged: ``1 / (n + 1)`` for the paper's threshold over ``n``
        held-out normals (or control normals), the target rate when one was set; None before fit or unknown."""
        if self.controls:
            return paper_false_alarm_rate(len(self.controls))
        return None if self.calibrator is None else self.calibrator.false_alarm_rate

    def fit(
        self,
        normal_images: Sequence["np.ndarray"],
        folds: int = 3,
        seed: int = 0,
        controls: int | None = None,
        false_alarm_rate: float | None = None,
        calibration: str = "auto",
        keep_heldout: bool = False,
    ) -> "Detector":
        """Fit the expert on normal images and calibrate it (see :mod:`myriad.calibration`).

        ``controls``: for a transductive expert that does not fit on the normal images,
        how many of them to keep as control normals for in-batch calibration
        (None: :data:`~myriad.calibration.DEFAULT_CONTROLS`, capped at the number of
        normal images; 0: the fixed calibration only). Ignored for other experts.
        ``false_alarm_rate``: None for the paper's threshold (maximum held-out normal),
        else the target rate of :func:`myriad.calibration.tail_threshold`. ``calibration``: how
        held-out normals are scored (:data:`myriad.calibration.CALIBRATION_METHODS`; ``auto``:
        leave-one-out where the expert can, else k folds). ``keep_heldout``: keep the normal images'
        held-out predictions (:attr:`heldout_predictions`, :meth:`heldout_detections`), e.g. to calibrate
        what reads the maps.
        """
        import numpy as np

        from myriad.images import check_batch
        from myriad.plugins import get_expert

        if controls is not None and controls < 0:
            raise ConfigError(f"controls must not be negative, got {controls}")
        check_false_alarm_rate(false_alarm_rate)
        check_calibration_method(calibration)
        images = check_batch(normal_images, what="normal images")
        config = self.base_expert.config
        self.tiling = self._plan_tiling(images)
        tiling = self.tiling

        def make_expert() -> "Expert":
            expert = get_expert(self.expert_name, config)
            return TiledExpert(expert, tiling) if tiling is not None else expert

        if false_alarm_rate is not None and self.expert.transductive and not self.expert.needs_fit:
            raise ConfigError(
                f"expert {self.expert_name!r} is calibrated in each batch by control normals (threshold = their "
                "maximum, false-alarm rate <= 1/(controls+1)); a target false-alarm rate applies to other experts"
            )
        held: list["Prediction"] | None = [] if keep_heldout else None
        self.expert, self.calibrator = fit_calibrated(
            make_expert, images, folds=folds, seed=seed, false_alarm_rate=false_alarm_rate, method=calibration,
            name=self.expert_name, heldout=held,
        )
        self.heldout_predictions = _shrunk(held) if held and len(held) == len(images) else None
        self.controls = []
        self.last_calibrator = None
        if self.expert.transductive and not self.expert.needs_fit:
            # the expert never saw these images, so they are valid held-out normals in any batch
            wanted = DEFAULT_CONTROLS if controls is None else controls
            count = min(wanted, len(images))
            if count >= MIN_CONTROLS:
                chosen = sorted(int(i) for i in np.random.default_rng(seed).permutation(len(images))[:count])
                self.controls = [images[i] for i in chosen]
            elif controls:
                raise ConfigError(
                    f"in-batch calibration needs at least {MIN_CONTROLS} control normals, "
                    f"got {len(images)} normal images and controls={controls}"
                )
        return self

    def heldout_detections(self) -> list[Detection] | None:
        """The normal images' held-out predictions as calibrated detections (None when not kept, or when the
        detector calibrates each batch with control normals)."""
        if self.heldout_predictions is None or self.calibrator is None or self.controls:
            return None
        return [self._detection(pred, self.calibrator) for pred in self.heldout_predictions]

    def _plan_tiling(self, images: list["np.ndarray"]) -> Tiling | None:
        """The tiling for these normal images (None when the expert gets them whole)."""
        from myriad.errors import ImageError

        if self.tile is None or self.tile == "none" or self.expert.transductive:
            if self.tile not in (None, "none", "auto") and self.expert.transductive:
                raise ConfigError(f"expert {self.expert_name!r} is transductive: tiled scoring does not apply to it")
            return None
        from collections import Counter

        counts = Counter(image.shape[:2] for image in images)
        tiling = plan_tiling(max(counts, key=lambda s: min(s)), self.tile, self.tile_overlap)
        if tiling is not None and len(counts) > 1:
            common = counts.most_common(1)[0][0]
            odd = next(i for i, image in enumerate(images) if image.shape[:2] != common)
            sizes = ", ".join(f"{n} of {h} x {w}" for (h, w), n in counts.most_common())
            error = ImageError(
                f"normal image {odd} is {images[odd].shape[0]} x {images[odd].shape[1]}, but tiled scoring needs "
                f"normal images of one size (got {sizes}): give images of one size, or --tile none"
            )
            error.index = odd  # type: ignore[attr-defined]  # lets callers that know file names name it
            raise error
        return tiling

    def detect(self, images: Sequence["np.ndarray"]) -> list[Detection]:
        """Score images; maps are at each image's resolution.

        With control normals (a transductive expert, see the module docstring) the
        batch is scored together with the controls and calibrated by them.
        """
        if self.controls:
            return self._detect_with_controls(images)
        if self.calibrator is None:
            if self.expert.needs_fit:
                raise ExpertStateError(f"detector for {self.expert_name!r} must be fitted before detect()")
            self.calibrator = Calibrator.identity()
        self.last_calibrator = self.calibrator
        return [self._detection(pred, self.calibrator) for pred in self.expert.predict(images)]

    def _detect_with_controls(self, images: Sequence["np.ndarray"]) -> list[Detection]:
        from myriad.errors import MyriadError
        from myriad.images import check_batch

        batch = check_batch(images)
        preds = self.expert.predict(batch + self.controls)
        tests, controls = preds[: len(batch)], preds[len(batch) :]
        if len(controls) != len(self.controls):  # pragma: no cover - Expert.predict checks the count
            raise MyriadError(f"{self.expert_name}: lost control predictions")
        calibrator = Calibrator.from_controls(
            [p.score for p in controls],
            [p.anomaly_map for p in controls],
            method=f"in-batch-controls(m={len(controls)},batch={len(batch)})",
        )
        self.last_calibrator = calibrator
        return [self._detection(pred, calibrator) for pred in tests]

    @staticmethod
    def _detection(pred: "Prediction", calibrator: Calibrator) -> Detection:
        return Detection(
            raw_map=pred.anomaly_map,
            raw_score=float(pred.score),
            anomaly_map=calibrator.apply_map(pred.anomaly_map),
            score=float(calibrator.apply(pred.score)),
            anomalous=bool(calibrator.is_anomalous(pred.score)),
            false_alarm_rate=calibrator.false_alarm_rate,
        )

    def save(self, directory: str | Path) -> Path:
        """Save expert state, calibration and the expert name to ``directory``."""
        from myriad.io import atomic_write_text

        directory = Path(directory)
        self.base_expert.save(directory / "expert")
        if self.calibrator is not None:
            self.calibrator.save(directory / "calibration.json")
        meta: dict[str, Any] = {"expert": self.expert_name}
        if self.tiling is not None:
            meta["tiling"] = self.tiling.to_dict()
        if self.controls:  # control normals (RGB uint8), in the order detect() appends them
            from myriad.io import save_tensors

            save_tensors({f"control_{i:04d}": image for i, image in enumerate(self.controls)}, directory / CONTROLS_FILE)
            meta["controls"] = len(self.controls)
        atomic_write_text(directory / "detector.json", json.dumps(meta, indent=2))
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
        record = json.loads(meta.read_text())
        name = record["expert"]
        info = get_expert_info(name)
        expert_cls = info.load_factory()
        loader = expert_cls.load if isinstance(expert_cls, type) and issubclass(expert_cls, Expert) else Expert.load
        detector = cls.__new__(cls)
        detector.expert_name = name
        detector.expert = loader(directory / "expert")
        detector.tile, detector.tile_overlap, detector.tiling = None, DEFAULT_OVERLAP, None
        if record.get("tiling"):
            try:
                detector.tiling = Tiling(**record["tiling"])
            except TypeError as exc:
                raise WeightsError(f"{meta}: invalid tiling record {record['tiling']!r}: {exc}") from exc
            detector.tile = detector.tiling.tile
            fitted = detector.expert.fitted
            detector.expert = TiledExpert(detector.expert, detector.tiling)
            detector.expert.fitted = fitted
        calib = directory / "calibration.json"
        detector.calibrator = Calibrator.load(calib) if calib.is_file() else None
        detector.controls = []
        detector.last_calibrator = None
        detector.heldout_predictions = None
        if record.get("controls"):
            from myriad.io import load_tensors

            tensors = load_tensors(directory / CONTROLS_FILE)
            detector.controls = [tensors[key].numpy() for key in sorted(tensors)]
            if len(detector.controls) != int(record["controls"]):
                raise WeightsError(
                    f"{directory / CONTROLS_FILE}: {len(detector.controls)} control images, detector.json says {record['controls']}"
                )
        return detector


def _shrunk(predictions: list["Prediction"]) -> list["Prediction"]:
    """Predictions with maps bilinearly shrunk so the longer side is at most :data:`HELDOUT_MAP_SIDE`."""
    from myriad.experts import Prediction
    from myriad.images import resize_map

    out = []
    for pred in predictions:
        height, width = pred.anomaly_map.shape[:2]
        scale = HELDOUT_MAP_SIDE / max(height, width)
        values = pred.anomaly_map
        if scale < 1:
            values = resize_map(values, max(1, round(height * scale)), max(1, round(width * scale)))
        out.append(Prediction(anomaly_map=values, score=float(pred.score)))
    return out
