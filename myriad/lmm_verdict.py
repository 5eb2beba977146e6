"""Ask the LMM about images and their expert detections, and calibrate its verdict on a fitted detector's normals.

Shared by :class:`myriad.inspection.Inspector` (``myriad inspect``, the server) and the
evaluation's LMM step, so that both feed the model the same maps and calibrate the same way
(:mod:`myriad.verdict`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from myriad.verdict import VerdictCalibration, calibrate_verdict, check_verdict_rule

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from myriad.detector import Detection

__all__ = ["HELDOUT_BATCH", "ask_lmm", "calibrate_lmm_verdict", "heldout_flags", "verdict_margins"]

#: Images per LMM call when scoring held-out normals.
HELDOUT_BATCH = 8


def ask_lmm(
    model: Any,
    images: Sequence["np.ndarray"],
    detections: Sequence["Detection"],
    instruction: str | None = None,
    device: str = "cpu",
    **generation: Any,
) -> tuple[list[str], list[float]]:
    """The model's answers about ``images`` with their detections' calibrated maps and stated rates, and each
    answer's verdict margin (:meth:`myriad.lmm.MyriadLMM.answer_with_margin`)."""
    import numpy as np
    import torch

    from myriad.images import resize_map

    size = model.config.prompt_generators.map_size
    maps = torch.from_numpy(np.stack([resize_map(d.anomaly_map, size, size) for d in detections]))[:, None]
    pixels = model.preprocess(list(images)).to(device)
    with torch.inference_mode():
        answers, margins = model.answer_with_margin(
            pixels, maps.to(device), instruction, false_alarm_rates=[d.false_alarm_rate for d in detections], **generation
        )
    return answers, [float(m) for m in margins]


def calibrate_lmm_verdict(
    model: Any,
    normal_images: Sequence["np.ndarray"],
    detector: Any,
    rule: str,
    false_alarm_rate: float | None = None,
    device: str = "cpu",
) -> tuple[VerdictCalibration, list[float]]:
    """The verdict's calibration for a detector fitted with ``keep_heldout=True`` on ``normal_images``, and the
    LMM's margins on those held-out normals (empty when the rule needs none or the detector kept none)."""
    check_verdict_rule(rule)
    if rule != "either":
        return calibrate_verdict([], [], rule), []
    held = detector.heldout_detections()
    if held is None or len(held) != len(normal_images):
        reason = "the expert keeps no held-out normal maps (it is calibrated in each batch, or on one reference)"
        return VerdictCalibration.uncalibrated(rule, reason), []
    margins = verdict_margins(model, normal_images, held, device)
    return calibrate_verdict(margins, heldout_flags(held), rule, false_alarm_rate), margins


def verdict_margins(
    model: Any, images: Sequence["np.ndarray"], detections: Sequence["Detection"], device: str = "cpu"
) -> list[float]:
    """The LMM's verdict margin on each image with its detection, in batches of :data:`HELDOUT_BATCH`, decoding
    one token only (the margin is read from the prefill)."""
    margins: list[float] = []
    for start in range(0, len(detections), HELDOUT_BATCH):
        part = slice(start, start + HELDOUT_BATCH)
        margins += ask_lmm(model, images[part], detections[part], device=device, max_new_tokens=1)[1]
    return margins


def heldout_flags(held: Sequence["Detection"]) -> list[bool]:
    """Which held-out normals count as the expert's alarms for the verdict's calibration: those it flags, and those
    on its threshold (the paper's threshold *is* the largest held-out normal, whose map peaks at exactly 0.5: it
    is the expert's boundary case, which the expert would flag were the threshold set without it)."""
    from myriad.calibration import DECISION_THRESHOLD

    return [bool(d.anomalous) or d.score >= DECISION_THRESHOLD - 1e-6 for d in held]
