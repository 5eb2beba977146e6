"""The ``--lmm`` evaluation step: Myriad's answers and verdict beside the expert's own decisions.

After each fit the step calibrates the verdict (:mod:`myriad.verdict`): it asks the model
about the normal images' held-out maps (the expert keeps them for it) and sets the LMM's
threshold on them. For each test batch it feeds the images and the expert's *calibrated*
maps to the model, asks the default question (or ``--ask``), and stores in each record's
``extra``: the answer, its parse (:func:`myriad.lmm.prompting.parse_answer`), its verdict
margin (``log P(yes) - log P(no)`` of the first token) and the verdict under the rule with
who decided it. Per category it reports ``accuracy`` (parsed answers vs labels, ``unknown``
excluded, as the published evaluation does), ``accuracy_all`` (``unknown`` counted as wrong),
``unknown``, and the verdict's ``verdict_accuracy``, ``verdict_balanced_accuracy``,
``verdict_false_alarm_rate`` (stated), ``verdict_fallback`` (1 where the rule fell back to the
expert's decision) and ``verdict_fit_seconds`` (the calibration's cost).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from myriad.verdict import DEFAULT_VERDICT_RULE, VerdictCalibration, check_verdict_rule

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from myriad.datasets import Category, Sample
    from myriad.detector import Detection
    from myriad.evaluation.records import ImageRecord


@dataclass
class LMMStep:
    """Evaluation step running the Myriad LMM on every batch, with its verdict calibrated per fit."""

    model: Any
    instruction: str | None = None
    device: str = "cpu"
    name: str = "lmm"
    max_new_tokens: int | None = None
    verdict_rule: str = DEFAULT_VERDICT_RULE
    false_alarm_rate: float | None = None
    #: put before every key this step writes into ``record.extra`` (several LMM steps on one run: ``"NAME:"``)
    extra_prefix: str = ""
    seconds: float = field(default=0.0, init=False)
    calibration: VerdictCalibration | None = field(default=None, init=False)
    calibration_seconds: float = field(default=0.0, init=False)
    expert_rate: float | None = field(default=None, init=False)
    #: the LMM's verdict margins on the last fit's held-out normals (empty when not calibrated on them)
    heldout_margins: list[float] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        check_verdict_rule(self.verdict_rule)

    @property
    def needs_heldout(self) -> bool:
        """Whether the runner must keep the normals' held-out maps (rule ``either``)."""
        return self.verdict_rule == "either"

    def fitted(self, category: "Category", detector: Any, normal_images: Sequence["np.ndarray"]) -> None:
        """Calibrate the verdict on the held-out normals of this fit."""
        from myriad.lmm_verdict import calibrate_lmm_verdict

        start = time.perf_counter()
        self.expert_rate = detector.false_alarm_rate
        self.calibration, self.heldout_margins = calibrate_lmm_verdict(
            self.model, normal_images, detector, self.verdict_rule, self.false_alarm_rate, self.device
        )
        self.calibration_seconds = time.perf_counter() - start

    def _ask(self, images: Sequence["np.ndarray"], detections: Sequence["Detection"]) -> tuple[list[str], list[float]]:
        from myriad.lmm_verdict import ask_lmm

        kwargs = {} if self.max_new_tokens is None else {"max_new_tokens": self.max_new_tokens}
        return ask_lmm(self.model, images, detections, self.instruction, self.device, **kwargs)

    def process(
        self,
        category: "Category",
        samples: Sequence["Sample"],
        images: Sequence["np.ndarray"],
        detections: Sequence["Detection"],
        records: Sequence["ImageRecord"],
    ) -> None:
        """Answer for each image of the batch; fills ``record.extra``."""
        from myriad.lmm.prompting import parse_answer

        start = time.perf_counter()
        answers, margins = self._ask(images, detections)
        calibration = self.calibration or VerdictCalibration.uncalibrated(self.verdict_rule)
        for record, answer, margin, det in zip(records, answers, margins, detections):
            label = parse_answer(answer)
            verdict, source = calibration.decide(bool(det.anomalous), margin, label)
            p = self.extra_prefix
            record.extra[f"{p}lmm_answer"] = answer
            record.extra[f"{p}lmm_decision"] = label
            record.extra[f"{p}lmm_margin"] = round(margin, 4)
            record.extra[f"{p}verdict"] = "anomalous" if verdict else "normal"
            record.extra[f"{p}verdict_source"] = source
        self.seconds += time.perf_counter() - start

    def metrics(self, records: Sequence["ImageRecord"]) -> dict[str, float | None]:
        """The raw answers' ``accuracy`` (unknown excluded), ``accuracy_all``, ``unknown``; the verdict's metrics."""
        p = self.extra_prefix
        decided = [r for r in records if r.extra.get(f"{p}lmm_decision") in ("anomalous", "normal")]
        correct = sum((r.extra[f"{p}lmm_decision"] == "anomalous") == bool(r.label) for r in decided)
        unknown = len(records) - len(decided)
        verdicts = [(r.extra.get(f"{p}verdict") == "anomalous", bool(r.label)) for r in records if f"{p}verdict" in r.extra]
        positives = [v for v, label in verdicts if label]
        negatives = [v for v, label in verdicts if not label]
        balanced = None
        if positives and negatives:
            balanced = 0.5 * (sum(positives) / len(positives) + 1 - sum(negatives) / len(negatives))
        calibration = self.calibration
        return {
            "accuracy": correct / len(decided) if decided else None,
            "accuracy_all": correct / len(records) if records else None,
            "unknown": float(unknown),
            "verdict_accuracy": sum(v == label for v, label in verdicts) / len(verdicts) if verdicts else None,
            "verdict_balanced_accuracy": balanced,
            "verdict_false_alarm_rate": None if calibration is None else calibration.false_alarm_rate(self.expert_rate),
            "verdict_fallback": None if calibration is None else float(calibration.fallback is not None),
            "verdict_threshold": None if calibration is None else calibration.threshold,
            "verdict_fit_seconds": round(self.calibration_seconds, 3),
        }
