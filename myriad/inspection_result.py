"""One inspected image's outcome: :class:`InspectionResult`, the fields of ``results.jsonl`` and the API.

Made by :meth:`myriad.inspection.Inspector.inspect`; it holds the verdicts, Myriad's answer, the
map's :class:`~myriad.findings.Findings` and the answer they ground, and the maps and pixels the
overlays and follow-ups need (left out of the JSON record).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from myriad.findings import Findings

__all__ = ["InspectionResult"]


@dataclass
class InspectionResult:
    """One image's outcome (the fields of ``results.jsonl``)."""

    image: str
    expert: str
    mode: str
    score: float
    threshold: float
    expert_decision: str
    decision: str
    answer: str
    timings_ms: dict[str, float]
    anomaly_map: "np.ndarray | None" = field(default=None, repr=False)
    pixels: "np.ndarray | None" = field(default=None, repr=False)
    #: fused experts: each member's calibrated score, decision and mode (None for one expert)
    members: dict[str, dict[str, Any]] | None = None
    #: what the expert's calibrated map and score say: region, extent, count, severity (:mod:`myriad.findings`)
    findings: "Findings | None" = None
    #: the findings worded for the question asked (:func:`myriad.answers_text.compose_answer`); not the LMM's
    grounded_answer: str = ""
    #: the calibrated map the findings were measured on, which overlays draw: the fused map, or for a fusion
    #: whose local member fired, the maps of the local members that fired (see ``_measure``)
    located_map: "np.ndarray | None" = field(default=None, repr=False)
    #: how ``answer`` was made: ``facts`` (the LMM's verdict, then the map's facts for the question) or ``lmm``
    answer_route: str = "facts"
    #: the LMM's own text (route ``facts``: its answer to the paper's question, which gave the verdict); '' without LMM
    lmm_answer: str = ""
    #: the share of normal images the expert's calibration is expected to flag (``Detection.false_alarm_rate``:
    #: 1/(n+1) for n held-out normals, combined over a fusion's members); None when unknown
    false_alarm_rate: float | None = None
    #: who decided ``decision`` (:meth:`myriad.verdict.VerdictCalibration.decide`): ``expert``, ``lmm`` or ``both``
    verdict_source: str = "expert"
    #: the LMM's verdict margin ``log P(yes) - log P(no)`` on the paper's question (None without LMM)
    lmm_margin: float | None = None
    #: the share of normal images the verdict is expected to flag (the expert's plus what the LMM adds;
    #: :meth:`myriad.verdict.VerdictCalibration.false_alarm_rate`); None when unknown
    verdict_false_alarm_rate: float | None = None
    #: the decision before the line's acceptance rules (:mod:`myriad.acceptance`); None when no rules apply
    decision_before_rules: str | None = None
    #: the acceptance rule that changed the decision ('' when none did)
    rule: str = ""

    @property
    def answer_problems(self) -> list[str]:
        """Why Myriad's ``answer`` fails the degeneracy check (:func:`myriad.answers_text.degeneracy_reasons`)."""
        from myriad.answers_text import degeneracy_reasons

        return degeneracy_reasons(self.answer) if self.answer else []

    def grounded_for(self, question: str | None) -> str:
        """The findings worded for ``question`` (a follow-up, say); '' when nothing was measured."""
        from myriad.answers_text import DEFAULT_QUESTION_TYPE, classify_question, compose_answer

        if self.findings is None:
            return ""
        return compose_answer(self.findings, DEFAULT_QUESTION_TYPE if question is None else classify_question(question))

    def shown_answer(self) -> str:
        """The answer to show a person: Myriad's, or the grounded answer when Myriad's is empty or degenerate."""
        return self.grounded_answer if not self.answer or self.answer_problems else self.answer

    def caption(self) -> str:
        """``anomalous (0.83): <shown answer>``, the band under an overlay."""
        shown = self.shown_answer()
        return f"{self.decision} ({self.score:.2f})" + (f": {shown}" if shown else "")

    def overlay_map(self) -> "np.ndarray | None":
        """The map an overlay draws: :attr:`located_map` when measured, else :attr:`anomaly_map`."""
        return self.located_map if self.located_map is not None else self.anomaly_map

    def as_record(self) -> dict[str, Any]:
        """The JSON-serialisable record (maps and pixels left out; ``members`` for fused experts;
        ``findings`` and ``grounded_answer`` when measured)."""
        extra: dict[str, Any] = {"members": self.members} if self.members else {}
        if self.findings is not None:
            extra["findings"] = self.findings.as_dict()
            extra["grounded_answer"] = self.grounded_answer
            extra["answer_degenerate"] = self.answer_problems
        if self.false_alarm_rate is not None:
            extra["false_alarm_rate"] = round(self.false_alarm_rate, 4)
        if self.decision_before_rules is not None:
            extra["decision_before_rules"] = self.decision_before_rules
            extra["rule"] = self.rule
        if self.lmm_answer:
            extra["answer_route"] = self.answer_route
            extra["lmm_answer"] = self.lmm_answer
            extra["verdict_source"] = self.verdict_source
            if self.lmm_margin is not None:
                extra["lmm_margin"] = round(self.lmm_margin, 4)
            if self.verdict_false_alarm_rate is not None:
                extra["verdict_false_alarm_rate"] = round(self.verdict_false_alarm_rate, 4)
        return {
            "image": self.image,
            "expert": self.expert,
            "mode": self.mode,
            "score": round(self.score, 6),
            "threshold": self.threshold,
            "expert_decision": self.expert_decision,
            "decision": self.decision,
            "answer": self.answer,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            **extra,
        }
