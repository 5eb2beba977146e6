"""Acceptance rules: a line's own criteria applied to the findings after the verdict.

A quality engineer decides with rules the model cannot know ("particles under 0.5 % of the part
are acceptable", "ignore the label area"). A rules file (TOML, :func:`load_rules`) holds them::

    ignore_boxes = [[0.0, 0.0, 0.25, 0.1]]   # x0, y0, x1, y1 as fractions of the width and height
    ignore_mask = "label.png"                # white = ignore (a path relative to the rules file)
    min_area = 0.005                         # an alarm whose located area is under 0.5 % of the image is accepted
    min_severity = "medium"                  # an alarm of lower severity is accepted
    review_rate = 0.05                       # a normal decision scoring among the top 5 % of normals is "review"
    accept_kinds = ["stain"]                 # an alarm whose kind guess is one of these is accepted (see below)

Applied in this order to an anomalous decision (the first rule that accepts it names itself):

1. ``ignore_boxes`` / ``ignore_mask``: the calibrated map is cleared in the ignored area and the
   findings are measured again; the alarm is accepted when the map's strongest point lies in the
   ignored area and nothing outside it reaches the threshold (a texture-wide finding is not
   located and is never ignored).
2. ``min_area``: accepted when the located area (share of the image above the threshold) is below
   it. An alarm only the LMM raised has no located area, so this rule accepts it too (said so).
3. ``min_severity``: accepted when the findings' severity is below it.
4. ``accept_kinds``: accepted when the measured kind guess is one of them. Kind guesses are often
   wrong (:data:`KIND_GUESS_ACCURACY`), so loading such a rule warns with that accuracy.

Then a normal decision whose calibrated score lies in the review band becomes ``review``: between
the threshold minus ``review_band`` (calibrated-score units) and the threshold, or, with
``review_rate``, from the score that share of the held-out normals exceeds (calibrated on the
user's normals at fit time, :func:`review_floor`). Each result keeps the decision before the rules
and the rule that changed it. Pure computation (numpy, pydantic); the Inspector applies it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from myriad.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from myriad.findings import Findings

__all__ = ["AcceptanceRules", "KIND_GUESS_ACCURACY", "RuleOutcome", "apply_rules", "load_rules", "review_floor"]

#: The kind guess's measured accuracy on flagged defects (docs/findings.md, "How true are the findings":
#: default expert, visible dev set, one-class), stated whenever a rule acts on the kind.
KIND_GUESS_ACCURACY = 0.65
SEVERITIES = ("low", "medium", "high")


class AcceptanceRules(BaseModel):
    """The rules of one line (see the module docstring); every field optional, unknown fields refused."""

    model_config = ConfigDict(extra="forbid")

    ignore_boxes: list[tuple[float, float, float, float]] = Field(default_factory=list)
    ignore_mask: Optional[Path] = None
    min_area: Optional[float] = Field(None, ge=0.0, le=1.0)
    min_severity: Optional[Literal["low", "medium", "high"]] = None
    review_band: Optional[float] = Field(None, gt=0.0, le=0.5)
    review_rate: Optional[float] = Field(None, gt=0.0, lt=1.0)
    accept_kinds: list[str] = Field(default_factory=list)

    @field_validator("ignore_boxes")
    @classmethod
    def _boxes(cls, boxes: list[tuple[float, float, float, float]]) -> list[tuple[float, float, float, float]]:
        for box in boxes:
            x0, y0, x1, y1 = box
            if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
                raise ValueError(f"box {list(box)}: give [x0, y0, x1, y1] as fractions with 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")
        return boxes

    @field_validator("accept_kinds")
    @classmethod
    def _kinds(cls, kinds: list[str]) -> list[str]:
        from myriad.defect_kinds import MEASURED_KINDS

        unknown = [k for k in kinds if k not in MEASURED_KINDS]
        if unknown:
            raise ValueError(f"unknown kinds {unknown}; the kind guess names: {', '.join(MEASURED_KINDS)}")
        return kinds

    @model_validator(mode="after")
    def _one_band(self) -> "AcceptanceRules":
        if self.review_band is not None and self.review_rate is not None:
            raise ValueError("give review_band or review_rate, not both")
        return self

    def warnings(self) -> list[str]:
        """What a person must know before trusting these rules (rules on the kind guess)."""
        if not self.accept_kinds:
            return []
        return [f"accept_kinds {self.accept_kinds}: the kind guess was right for {KIND_GUESS_ACCURACY:.0%} of flagged "
                "defects when measured (docs/findings.md), so this rule also accepts defects of other kinds"]


def load_rules(path: str | Path) -> AcceptanceRules:
    """Read a TOML rules file; a one-line :class:`ConfigError` names the file and the field at fault.

    ``ignore_mask`` is resolved against the rules file's folder and must exist."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such rules file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML rules file: {exc}") from None
    try:
        rules = AcceptanceRules.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "rules"
        message = "unknown field" if first.get("type") == "extra_forbidden" else first.get("msg", "invalid")
        raise ConfigError(f"{path}: {where}: {message}") from None
    if rules.ignore_mask is not None:
        mask = rules.ignore_mask if rules.ignore_mask.is_absolute() else path.parent / rules.ignore_mask
        if not mask.is_file():
            raise ConfigError(f"{path}: ignore_mask: {mask} does not exist")
        rules = rules.model_copy(update={"ignore_mask": mask.resolve()})
    return rules


def ignored_area(rules: AcceptanceRules, shape: tuple[int, int]) -> "np.ndarray | None":
    """Boolean ``H x W`` of the ignored pixels for an image of ``shape``; None when nothing is ignored."""
    import numpy as np

    if not rules.ignore_boxes and rules.ignore_mask is None:
        return None
    height, width = shape
    area = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in rules.ignore_boxes:
        area[int(round(y0 * height)) : int(round(y1 * height)), int(round(x0 * width)) : int(round(x1 * width))] = True
    if rules.ignore_mask is not None:
        from PIL import Image

        with Image.open(rules.ignore_mask) as mask:
            grey = mask.convert("L").resize((width, height), Image.NEAREST)
        area |= np.asarray(grey) >= 128
    return area


def review_floor(rules: AcceptanceRules, heldout_calibrated: "np.ndarray | None", threshold: float = 0.5) -> float | None:
    """The lower edge of the review band in calibrated-score units (None: no band).

    ``review_rate``: the score that share of the held-out normals' calibrated scores exceeds (their
    ``1 - rate`` quantile), capped below the threshold; needs those scores."""
    import numpy as np

    if rules.review_band is not None:
        return threshold - rules.review_band
    if rules.review_rate is None:
        return None
    if heldout_calibrated is None or len(heldout_calibrated) < 2:
        raise ConfigError("review_rate needs the expert's held-out normal scores, which this expert does not keep; "
                          "use review_band (a width in calibrated-score units) instead")
    return float(min(np.quantile(np.asarray(heldout_calibrated, dtype=np.float64), 1.0 - rules.review_rate), threshold))


@dataclass(frozen=True)
class RuleOutcome:
    """The decision after the rules, the rule that changed it ('' when none did) and the findings to report."""

    decision: str
    rule: str
    findings: "Findings | None"


def apply_rules(
    rules: AcceptanceRules,
    decision: str,
    score: float,
    findings: "Findings | None",
    located_map: "np.ndarray | None",
    remeasure: Any,
    floor: float | None = None,
    threshold: float = 0.5,
) -> RuleOutcome:
    """Apply ``rules`` to one image's decision (see the module docstring).

    ``remeasure(masked_map)`` gives the findings of the located map with the ignored area cleared;
    ``floor`` is :func:`review_floor`'s lower edge of the review band.
    """
    import numpy as np

    if decision == "anomalous" and findings is not None:
        texture_wide = bool(findings.texture_wide)
        area = None if located_map is None or texture_wide else ignored_area(rules, located_map.shape[:2])
        if area is not None:
            peak = np.unravel_index(int(np.argmax(located_map)), located_map.shape)
            masked = np.where(area, 0.0, located_map).astype(np.float32)
            if area[peak] and float(masked.max()) < threshold:
                return RuleOutcome("normal", "ignore: the defect lies in an ignored area", remeasure(masked))
            findings = remeasure(masked) if area.any() else findings
        if rules.min_area is not None and not texture_wide and findings.extent < rules.min_area:
            shown = "no located area (the LMM's alarm)" if not findings.located else f"{findings.extent:.2%} of the image"
            return RuleOutcome("normal", f"min_area {rules.min_area:.2%}: {shown}", findings)
        if rules.min_severity is not None and findings.severity is not None:
            if SEVERITIES.index(findings.severity) < SEVERITIES.index(rules.min_severity):
                return RuleOutcome("normal", f"min_severity {rules.min_severity}: severity {findings.severity}", findings)
        if rules.accept_kinds and findings.kind in rules.accept_kinds:
            return RuleOutcome("normal", f"accept_kinds: likely a {findings.kind} (kind guesses are right about "
                                         f"{KIND_GUESS_ACCURACY:.0%} of the time)", findings)
        return RuleOutcome(decision, "", findings)
    if decision == "normal" and floor is not None and floor <= score < threshold:
        return RuleOutcome("review", f"review band: score {score:.2f} within [{floor:.2f}, {threshold:.2f})", findings)
    return RuleOutcome(decision, "", findings)
