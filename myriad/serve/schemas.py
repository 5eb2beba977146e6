"""The JSON shapes of the API; FastAPI turns them into the OpenAPI schema at ``/openapi.json``."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    """Every refused request: ``{"detail": "<file or name>: <what is wrong>"}``."""

    detail: str


class HealthOut(BaseModel):
    """Liveness and what the server has loaded."""

    status: str
    version: str
    lmm: str = Field(description="'none' (expert-only answers), 'mini', 'weights file' (trained weights; the path is "
                     "not shown), or 'injected'")
    answers: str = Field(
        "facts", description="answer route: 'facts' (the map's facts at Myriad's verdict; follow-ups work without "
        "an LMM too) or 'lmm' (the LMM's own text; follow-ups need it)"
    )
    default_expert: str
    false_alarm_rate: Optional[float] = Field(
        None, description="target false-alarm rate of every calibration (--false-alarm-rate); null: the paper's "
        "maximum held-out normal"
    )
    device: str
    uptime_s: float
    profiles: int
    sessions: int
    profile_bytes: int = Field(0, description="bytes the profiles hold (arrays and tensors; shared models left out)")
    session_bytes: int = Field(0, description="bytes the sessions hold (images, maps, overlays, conversations)")
    max_memory_bytes: int = Field(0, description="the memory budget of clients' profiles and sessions (--max-memory-mb)")
    token_required: bool = Field(description="whether /api/ requests need 'Authorization: Bearer <token>'")


class ExpertOut(BaseModel):
    """An installed expert plugin, or a fused expert on offer (``members`` set)."""

    name: str = Field(description="the name to fit a profile with; a fusion joins its members with '+'")
    modes: list[str]
    distribution: Optional[str] = None
    version: Optional[str] = None
    description: str
    members: Optional[list[str]] = Field(
        None, description="a fused expert's members (its config gives settings per member); null for one expert"
    )


class MemberOut(BaseModel):
    """One member of a fused expert on one image."""

    score: float = Field(description="the member's calibrated anomaly score in [0, 1]")
    anomalous: bool = Field(description="whether the member is above its own threshold (0.5)")
    mode: str


class FindingsOut(BaseModel):
    """What the expert's calibrated map says about the image (``docs/findings.md``); measured, never generated."""

    verdict: str = Field(
        description="'anomalous' or 'normal': the verdict the facts were measured at (the LMM's on the 'facts' answer "
        "route, else the expert's calibrated decision)"
    )
    region: Optional[str] = Field(
        None, description="3 x 3 grid cell ('top left' ... 'bottom right'), 'across the whole image' for a "
        "texture-wide defect; null when normal"
    )
    extent: float = Field(description="share of the image above the threshold, in [0, 1]")
    extent_bucket: Optional[str] = Field(
        None, description="'small' (< 1 %), 'medium' (1-10 %), 'large' (> 10 %); null when normal"
    )
    count: int = Field(
        description="separate defective regions (specks under 0.01 % of the image not counted); 0 when normal"
    )
    severity: Optional[str] = Field(
        None, description="'low' (score < 0.65), 'medium' (< 0.85), 'high' (>= 0.85); null when normal"
    )
    texture_wide: bool
    score: float = Field(description="the calibrated image score the verdict and severity come from")
    kind: Optional[str] = Field(
        None, description="a measured guess: 'scratch', 'hole', 'stain', 'contamination / foreign particle' or "
        "'texture change'; null when normal or when the rules cannot tell"
    )
    kind_reason: str = Field("", description="the rule and measurement behind 'kind'")
    located: bool = Field(
        True, description="false when the verdict is anomalous but the expert's map holds no defect to measure (the "
        "LMM's Yes over an image the expert calls normal, or few-shot, only the image-level member fired): region, "
        "extent and count are then not given"
    )
    unlocated_reason: str = Field(
        "", description="why not located: 'below_threshold' (no area passes the expert's threshold) or "
        "'image_level_only' (few-shot, only the texture-wide member fired); '' when located"
    )


class ProfileOut(BaseModel):
    """A fitted inspection profile."""

    name: str
    expert: str
    config: dict[str, Any]
    mode: str
    num_normal: int
    fit_ms: float
    created: float
    preloaded: bool = Field(False, description="loaded by the server's operator (--profile): shared by every client, read-only")
    false_alarm_rate: Optional[float] = Field(None, description="the share of good images its calibration is expected to flag")


class InspectionOut(BaseModel):
    """The result of inspecting one image; ``session_id`` continues the conversation about it."""

    session_id: str
    profile: str
    image: str
    expert: str
    mode: str
    score: float = Field(description="calibrated anomaly score in [0, 1]")
    threshold: float = Field(description="decision threshold on the calibrated scale (always 0.5)")
    expert_decision: str
    decision: str = Field(description="Myriad's verdict (the expert's without an LMM)")
    answer: str = Field(
        description="Myriad's answer text: on the 'facts' route (the default) the map's facts worded for the "
        "question, at the LMM's verdict; on the 'lmm' route the LMM's own text; '' when the server runs --lmm none"
    )
    answer_route: Optional[str] = Field(None, description="'facts' or 'lmm' (null without an LMM)")
    lmm_answer: Optional[str] = Field(
        None, description="the LMM's own text (on the 'facts' route: its answer to the paper's question, which gave the verdict)"
    )
    timings_ms: dict[str, float]
    false_alarm_rate: Optional[float] = Field(
        None, description="the share of normal images the expert's calibration is expected to flag: 1/(n+1) for the "
        "paper's threshold over n held-out normals, combined over a fused expert's members; null when unknown"
    )
    verdict_source: Optional[str] = Field(
        None, description="who decided 'decision': 'expert', 'lmm' (the LMM's calibrated Yes added an alarm, or on "
        "the 'lmm' route its answer differed from the expert's) or 'both'; null without an LMM"
    )
    lmm_margin: Optional[float] = Field(
        None, description="the LMM's verdict margin log P(yes) - log P(no) on its first answer token; null without an LMM"
    )
    verdict_false_alarm_rate: Optional[float] = Field(
        None, description="the share of normal images Myriad's verdict is expected to flag: the expert's plus what the "
        "LMM's calibrated alarms add; null when unknown (the 'lmm' route, or an uncalibrated verdict rule)"
    )
    decision_before_rules: Optional[str] = Field(
        None, description="the verdict before the profile's acceptance rules ('decision' is after them: 'anomalous', "
        "'normal' or 'review'); null when the profile has no rules"
    )
    rule: Optional[str] = Field(None, description="the acceptance rule that changed the decision ('' when none did)")
    members: Optional[dict[str, MemberOut]] = Field(
        None, description="a fused expert: each member's calibrated score and decision, by member name (the fused "
        "score is their maximum, anomalous when any member is); null for one expert"
    )
    findings: Optional[FindingsOut] = Field(
        None, description="region, extent, count and severity measured on the expert's calibrated map"
    )
    grounded_answer: str = Field(
        "", description="the findings worded for the question asked (verdict first; a kind only when measured, "
        "causes only from the curated table)"
    )
    answer_degenerate: list[str] = Field(
        default_factory=list, description="why 'answer' failed the degeneracy check (repeated phrases, text outside "
        "the task, no Yes/No); empty when it passed. The page does not show a degenerate answer"
    )
    overlay_url: str = Field(description="GET it for the heat-map overlay PNG")


class QuestionIn(BaseModel):
    """A follow-up question about an inspected image."""

    question: str = Field(min_length=1, max_length=4000, description="at most the server's question limit (500 by default)")


class TurnOut(BaseModel):
    """One question and its answer."""

    question: str
    answer: str
    grounded_answer: str = Field("", description="the expert map's findings worded for this question")
    answer_degenerate: list[str] = Field(
        default_factory=list, description="why 'answer' failed the degeneracy check; empty when it passed"
    )


class AnswerOut(BaseModel):
    """The answer to a follow-up and the whole conversation so far."""

    session_id: str
    answer: str
    grounded_answer: str = Field("", description="the expert map's findings worded for the question")
    answer_degenerate: list[str] = Field(
        default_factory=list, description="why 'answer' failed the degeneracy check; empty when it passed"
    )
    turns: list[TurnOut]


class SessionOut(BaseModel):
    """An inspected image and its conversation."""

    session_id: str
    inspection: InspectionOut
    turns: list[TurnOut]
