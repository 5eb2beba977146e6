"""Myriad's verdict from the expert's decision and the LMM's, calibrated on the user's normals.

The LMM reads the expert's calibrated map and the image and answers Yes or No; its
confidence is the **verdict margin** ``log P(yes) - log P(no)`` of the answer's first token
(:mod:`myriad.lmm.verdict`). Left to itself (rule ``lmm``, the paper's) that answer is the
verdict: the LMM can then overrule ("veto") the expert's alarms and add alarms of its own at
a rate nobody measured. Rules (``VERDICT_RULES``):

- ``either`` (default): the verdict is anomalous when the expert flags the image **or** the
  LMM's margin exceeds a threshold calibrated like an expert's score: the largest margin of
  the held-out normal images the expert does not flag (or the ``false_alarm_rate`` tail of
  them). The LMM never vetoes an alarm, so the verdict catches everything the expert catches;
  it adds a catch only where it is more confident than on any normal it was calibrated on, so
  it adds about ``1 / (n + 1)`` false alarms over ``n`` such normals (stated beside the
  expert's: :meth:`VerdictCalibration.false_alarm_rate`).
- ``lmm``: the LMM's own answer (its parsed first word); an answer without a verdict leaves
  the expert's decision. Uncalibrated: the stated rate is unknown.
- ``expert``: the expert's decision; the LMM only words the answer.

With fewer than :data:`MIN_VERDICT_NORMALS` held-out normals (few-shot references) the
largest of them says little about the LMM's tail, so ``either`` falls back to the expert's
decision and says so (:attr:`VerdictCalibration.fallback`).

Why not let the LMM veto, measured on the shipped model (``docs/lmm.md``): where the expert
is calibrated on many normals its alarms are rarely false, and the LMM's vetoes then mostly
drop real (tiny) defects; no calibration on normal images can tell how often a veto is right,
because the normals it is calibrated on raise no alarm to veto.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from myriad.errors import ConfigError

__all__ = [
    "DEFAULT_VERDICT_RULE",
    "MIN_VERDICT_NORMALS",
    "VERDICT_RULES",
    "VerdictCalibration",
    "calibrate_verdict",
    "check_verdict_rule",
]

#: How the verdict combines the expert's decision and the LMM's (see the module docstring).
VERDICT_RULES = ("either", "lmm", "expert")
DEFAULT_VERDICT_RULE = "either"
#: Fewest held-out normals the ``either`` rule calibrates the LMM's threshold on.
MIN_VERDICT_NORMALS = 10


def check_verdict_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`VERDICT_RULES`, else ConfigError naming them."""
    if rule not in VERDICT_RULES:
        raise ConfigError(f"verdict rule must be one of {', '.join(VERDICT_RULES)}, got {rule!r}")
    return rule


@dataclass(frozen=True)
class VerdictCalibration:
    """How Myriad's verdict is decided for one fitted expert (JSON with :meth:`to_dict`)."""

    #: the rule asked for
    rule: str
    #: the rule in force: ``rule``, or ``expert`` after a fallback
    active: str
    #: ``either``: the LMM's margin above which its Yes adds an alarm (None for other rules)
    threshold: float | None = None
    #: held-out normals the threshold was set on (those the expert did not flag)
    num_normals: int = 0
    #: the expected share of normal images the LMM adds to the expert's alarms (None: unknown)
    added_rate: float | None = None
    #: why the rule fell back to the expert's decision (None: it did not)
    fallback: str | None = None

    @classmethod
    def uncalibrated(cls, rule: str, reason: str = "no normal images to calibrate the LMM on") -> "VerdictCalibration":
        """The verdict before (or without) a calibration: ``either`` falls back to the expert's decision for
        ``reason``; the other rules need no calibration."""
        check_verdict_rule(rule)
        if rule == "either":
            return cls(rule=rule, active="expert", fallback=reason)
        return cls(rule=rule, active=rule)

    def decide(self, expert_anomalous: bool, margin: float | None, lmm_label: str | None) -> tuple[bool, str]:
        """``(anomalous, source)``: the verdict and who decided it (``expert``, ``lmm`` or ``both``)."""
        if self.active == "expert" or margin is None and lmm_label is None:
            return expert_anomalous, "expert"
        if self.active == "lmm":
            if lmm_label not in ("anomalous", "normal"):
                return expert_anomalous, "expert"
            lmm_anomalous = lmm_label == "anomalous"
            return lmm_anomalous, "both" if lmm_anomalous == expert_anomalous else "lmm"
        lmm_anomalous = margin is not None and self.threshold is not None and margin > self.threshold
        if expert_anomalous:
            return True, "both" if lmm_anomalous else "expert"
        return (True, "lmm") if lmm_anomalous else (False, "both")

    def false_alarm_rate(self, expert_rate: float | None) -> float | None:
        """The verdict's expected share of flagged normal images, given the expert's (None when unknown)."""
        if self.active == "expert":
            return expert_rate
        if self.active == "lmm" or expert_rate is None or self.added_rate is None:
            return None
        return 1.0 - (1.0 - expert_rate) * (1.0 - self.added_rate)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VerdictCalibration":
        """Inverse of :meth:`to_dict`; ConfigError for a record that is not one."""
        try:
            calibration = cls(**data)
        except TypeError as exc:
            raise ConfigError(f"not a verdict calibration record: {exc}") from exc
        check_verdict_rule(calibration.rule)
        check_verdict_rule(calibration.active)
        return calibration

    def describe(self) -> str:
        """One line for people: what decides the verdict."""
        if self.fallback:
            return f"the verdict is the expert's decision ({self.fallback})"
        if self.active == "expert":
            return "the verdict is the expert's decision"
        if self.active == "lmm":
            return "the verdict is the LMM's answer (uncalibrated)"
        return (
            f"the LMM adds an alarm where its Yes margin exceeds {self.threshold:.2f} "
            f"(calibrated on {self.num_normals} normals) and never overrules the expert's alarms"
        )


def calibrate_verdict(
    margins: Sequence[float],
    expert_flags: Sequence[bool],
    rule: str = DEFAULT_VERDICT_RULE,
    false_alarm_rate: float | None = None,
) -> VerdictCalibration:
    """The verdict's calibration from the LMM's margins on held-out normal images and the expert's decisions on them.

    ``either``: threshold = the largest margin among the normals the expert does not flag (the
    paper's rule for experts), or with ``false_alarm_rate`` the level that share of them exceeds
    (:func:`myriad.calibration.tail_threshold`); fewer than :data:`MIN_VERDICT_NORMALS` of them fall
    back to the expert's decision. NaN margins are refused.
    """
    from myriad.calibration import check_false_alarm_rate, paper_false_alarm_rate, tail_threshold

    check_verdict_rule(rule)
    check_false_alarm_rate(false_alarm_rate)
    if len(margins) != len(expert_flags):
        raise ConfigError(f"{len(margins)} verdict margins for {len(expert_flags)} expert decisions")
    if any(not math.isfinite(float(m)) for m in margins):
        raise ConfigError("a held-out normal's verdict margin is not a finite number")
    if rule != "either":
        return VerdictCalibration(rule=rule, active=rule, num_normals=len(margins))
    quiet = [float(m) for m, flagged in zip(margins, expert_flags) if not flagged]
    if len(quiet) < MIN_VERDICT_NORMALS:
        reason = (
            f"{len(quiet)} held-out normal{'s' if len(quiet) != 1 else ''} to calibrate the LMM on, "
            f"fewer than {MIN_VERDICT_NORMALS}"
        )
        return VerdictCalibration(rule=rule, active="expert", num_normals=len(quiet), fallback=reason)
    if false_alarm_rate is None:
        threshold, added = max(quiet), paper_false_alarm_rate(len(quiet))
    else:
        threshold, added = tail_threshold(quiet, false_alarm_rate), false_alarm_rate
    return VerdictCalibration(rule=rule, active=rule, threshold=float(threshold), num_normals=len(quiet), added_rate=added)
