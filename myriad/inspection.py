"""Inspect images: a calibrated expert finds anomalies, Myriad answers in text.

The Python API behind ``myriad inspect``::

    from myriad.inspection import Inspector

    inspector = Inspector().fit(["refs/good1.png", "refs/good2.png"])   # the default fused expert
    for result in inspector.inspect(["parts/0001.png"]):
        print(result.decision, result.score, result.answer)
    print(inspector.follow_up(result, "Where is the defect?"))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from myriad.calibration import DECISION_THRESHOLD
from myriad.defaults import DEFAULT_EXPERT
from myriad.errors import ConfigError
from myriad.expert_settings import FEW_SHOT_MAX  # noqa: F401  (re-exported: few-shot up to this many normal images)
from myriad.inspection_result import InspectionResult
from myriad.lmm_loading import (  # noqa: F401  (re-exported: the names the CLI, the server and the docs use)
    DEFAULT_PRECISION,
    PRECISIONS,
    SHIPPED_MINI_WEIGHTS,
    load_lmm,
    native_bfloat16,
    resolve_precision,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from myriad.findings import Findings



def choose_mode(expert: str, config: dict, num_normal: int) -> dict:
    """Pick few-shot or one-class by the number of normal images, unless the config says
    (:func:`myriad.expert_settings.resolve_config`; per member for a fused expert)."""
    from myriad.expert_settings import resolve_config

    return resolve_config(expert, config, num_normal=num_normal)


def with_device(expert: str, config: dict, device: str) -> dict:
    """``config`` with ``device`` set for every (member) expert that has a device setting and leaves it unset."""
    from myriad.expert_settings import resolve_config

    return resolve_config(expert, config, device=device)


#: How text answers are made (``Inspector(answers=...)``, ``--answers``): see :class:`Inspector`.
ANSWER_ROUTES = ("facts", "lmm")
#: The default answer route.
DEFAULT_ANSWER_ROUTE = "facts"


@dataclass
class DetectedBatch:
    """What :meth:`Inspector.detect` hands to :meth:`Inspector.answer`: the images, their names, the expert's
    detections and its time per image (ms)."""

    names: list[str]
    pixels: list["np.ndarray"]
    detections: list[Any]
    expert_ms: float

    def __add__(self, other: "DetectedBatch") -> "DetectedBatch":
        """Two batches as one (the expert's time averaged over every image)."""
        count = len(self.pixels) + len(other.pixels)
        ms = (self.expert_ms * len(self.pixels) + other.expert_ms * len(other.pixels)) / max(count, 1)
        return DetectedBatch(self.names + other.names, self.pixels + other.pixels, self.detections + other.detections, ms)


class Inspector:
    """A calibrated expert plus (optionally) the Myriad LMM.

    ``answers`` chooses how text answers are made (``docs/findings.md``, "Answer routes"):

    - ``facts`` (the default): the LMM answers the paper's question, the one it was trained on, and
      its Yes / No is the verdict; the answer to the question asked is then the map's measured
      findings (region, extent, count, kind, severity) worded for that question
      (:func:`myriad.answers_text.compose_answer`), measured at that verdict. Follow-ups are answered
      the same way, so they stay consistent with the first answer, and need no LMM call. Without an
      LMM (``lmm=None``) the verdict is the expert's.
    - ``lmm``: the paper's route: the LMM's own text for the question asked, and follow-ups continue
      the conversation with it; ``grounded_answer`` still holds the map's facts beside it.

    ``verdict`` (route ``facts``) decides how the expert's decision and the LMM's combine
    (:mod:`myriad.verdict`): ``either`` (default) lets the LMM add an alarm above a threshold
    calibrated at :meth:`fit` on the normals' held-out maps and never overrule the expert's alarm;
    ``lmm`` is the LMM's answer as it is (the paper's); ``expert`` the expert's decision. Route
    ``lmm`` keeps the LMM's answer to the question asked as the verdict, as the paper does.
    """

    def __init__(
        self,
        expert: str = DEFAULT_EXPERT,
        expert_config: dict | None = None,
        lmm: str | Path | None = "mini",
        device: str = "cpu",
        model: Any = None,
        precision: str = DEFAULT_PRECISION,
        false_alarm_rate: float | None = None,
        tile: int | str | None = "auto",
        answers: str = DEFAULT_ANSWER_ROUTE,
        calibration: str = "auto",
        verdict: str = "either",
    ) -> None:
        from myriad.calibration import check_calibration_method, check_false_alarm_rate
        from myriad.fusion import member_configs
        from myriad.verdict import check_verdict_rule

        if answers not in ANSWER_ROUTES:
            raise ConfigError(f"answers={answers!r}: choose one of {', '.join(ANSWER_ROUTES)}")
        self.answers = answers
        member_configs(expert, expert_config)  # unknown experts and misshapen fused configs fail here, before loading
        self.expert_name = expert
        self.expert_config = dict(expert_config or {})
        self.device = device
        self.false_alarm_rate = check_false_alarm_rate(false_alarm_rate)
        self.calibration = check_calibration_method(calibration)
        self.tile = tile
        self.verdict_rule = check_verdict_rule(verdict)
        self.detector: Any = None
        #: how the verdict is decided for the fitted expert (:mod:`myriad.verdict`; set by :meth:`fit`)
        self.verdict: Any = None
        #: the line's acceptance rules applied after the verdict (:meth:`set_rules`; None: none)
        self.rules: Any = None
        self._review_floor: float | None = None
        #: what ``lmm`` named (None when a model object was passed in): a profile records it with its sha256
        self.lmm_source = None if model is not None else lmm
        self.model = model if model is not None else load_lmm(lmm, device, precision)

    def fit(self, normal_images: Sequence["np.ndarray | str | Path"]) -> "Inspector":
        """Fit and calibrate the expert on normal images (paths or RGB arrays)."""
        from myriad.fusion import make_detector
        from myriad.images import check_batch

        from myriad.errors import ImageError

        images = check_batch(normal_images, what="normal images")
        config = choose_mode(self.expert_name, self.expert_config, len(images))
        config = with_device(self.expert_name, config, self.device)
        detector = make_detector(self.expert_name, config, tile=self.tile)
        calibrate = self.model is not None and self.answers == "facts"
        try:
            detector.fit(
                images, false_alarm_rate=self.false_alarm_rate, calibration=self.calibration,
                keep_heldout=calibrate and self.verdict_rule == "either",
            )
        except ImageError as exc:  # one image at fault (e.g. another size): name its file when we know it
            index = getattr(exc, "index", None)
            if isinstance(index, int) and 0 <= index < len(normal_images) and isinstance(normal_images[index], (str, Path)):
                raise _renamed(exc, f"{normal_images[index]}: {exc}") from exc
            raise
        self.detector = detector
        self.verdict = None
        if calibrate:
            from myriad.lmm_verdict import calibrate_lmm_verdict

            self.verdict, _ = calibrate_lmm_verdict(
                self.model, images, detector, self.verdict_rule, self.false_alarm_rate, self.device
            )
            for member in getattr(detector, "members", [detector]):  # calibrated: the held-out maps are not needed
                member.heldout_predictions = None
        return self

    def set_rules(self, rules: Any) -> "Inspector":
        """Apply acceptance rules (:class:`myriad.acceptance.AcceptanceRules`, or None for none) after the
        verdict. Call after :meth:`fit` / :meth:`use_profile`: ``review_rate`` is calibrated on the fitted
        expert's held-out normals (ConfigError when it keeps none)."""
        from myriad.acceptance import review_floor

        if rules is not None and rules.review_rate is not None and self.detector is None:
            raise ConfigError("fit the expert (or use a profile) before setting a review_rate rule")
        self._review_floor = None if rules is None else review_floor(rules, _heldout_calibrated(self.detector), DECISION_THRESHOLD)
        self.rules = rules
        return self

    def lmm_identity(self) -> dict[str, Any] | None:
        """``{"name", "sha256"}`` of the LMM weights in use (sha256 None when unknown); None without an LMM."""
        if self.model is None:
            return None
        source = self.lmm_source
        if source is None:
            return {"name": "(a model object)", "sha256": None}
        from myriad.profiles import file_sha256

        path = SHIPPED_MINI_WEIGHTS if source == "mini" else Path(source)
        return {"name": str(source), "sha256": file_sha256(path) if path.is_file() else None}

    def use_profile(self, profile: Any) -> "Inspector":
        """Inspect with a fitted profile (:func:`myriad.profiles.load_profile`) instead of fitting.

        The profile's verdict calibration is used when it was made for this verdict rule with the
        same LMM weights (sha256); otherwise ``either`` falls back to the expert's decision and the
        answers say why (refit the profile with this LMM to calibrate it).
        """
        from myriad.verdict import VerdictCalibration

        self.detector = profile.detector
        self.expert_name = profile.expert
        self.verdict = None
        self.set_rules(getattr(profile, "rules", None))
        if self.model is None or self.answers != "facts":
            return self
        saved, made_with = profile.verdict, profile.record.get("verdict_lmm") or {}
        current = self.lmm_identity() or {}
        if saved is not None and saved.rule == self.verdict_rule and made_with.get("sha256") and made_with.get("sha256") == current.get("sha256"):
            self.verdict = saved
        elif saved is None:
            self.verdict = VerdictCalibration.uncalibrated(self.verdict_rule, "the profile was fitted without an LMM")
        elif saved.rule != self.verdict_rule:
            self.verdict = VerdictCalibration.uncalibrated(self.verdict_rule, f"the profile was calibrated for --verdict {saved.rule}")
        else:
            self.verdict = VerdictCalibration.uncalibrated(
                self.verdict_rule, f"the profile's verdict was calibrated with other LMM weights ({made_with.get('name')})"
            )
        return self

    @property
    def verdict_false_alarm_rate(self) -> float | None:
        """The share of normal images the verdict is expected to flag (the expert's without an LMM); None unknown."""
        rate = getattr(self.detector, "false_alarm_rate", None)
        return rate if self.verdict is None else self.verdict.false_alarm_rate(rate)

    @property
    def mode(self) -> str:
        """The active expert's mode."""
        if self.detector is None:
            raise ConfigError("call fit() before inspecting")
        return self.detector.mode

    @property
    def _few_shot(self) -> bool:
        """Whether the active expert (every member of a fusion) fits on a few references."""
        from myriad.experts import Mode
        from myriad.fusion import SEPARATOR

        return all(part == Mode.FEW_SHOT.value for part in self.mode.split(SEPARATOR))

    def inspect(
        self, images: Sequence["np.ndarray | str | Path"], ask: str | None = None, names: Sequence[str] | None = None
    ) -> list[InspectionResult]:
        """Score a batch with the expert and answer ``ask`` (default: the paper's question) with Myriad.

        Every result also holds the map's :class:`~myriad.findings.Findings` and the ``grounded_answer``
        to ``ask`` built from them (without ``ask``: the verdict and every finding). An ``ask`` that is
        empty or over :data:`myriad.answers_text.MAX_QUESTION_CHARS` characters raises ConfigError.
        The same as :meth:`answer` of :meth:`detect` (two stages a cluster may run on different workers).
        """
        from myriad.answers_text import check_question

        if ask is not None:
            check_question(ask, "ask")
        return self.answer(self.detect(images, names), ask)

    def detect(self, images: Sequence["np.ndarray | str | Path"], names: Sequence[str] | None = None) -> DetectedBatch:
        """The expert's stage of :meth:`inspect`: each image scored and mapped (no LMM). An expert's error names
        the image at fault."""
        from myriad.images import check_batch

        if self.detector is None:
            if not self.zero_shot_only:
                raise ConfigError(f"expert {self.expert_name!r} must be fitted on normal images first (fit())")
            from myriad.fusion import make_detector

            self.detector = make_detector(self.expert_name, self.expert_config, tile=self.tile)
        names = list(names) if names is not None else [str(i) if isinstance(i, (str, Path)) else f"image-{k}" for k, i in enumerate(images)]
        pixels = check_batch(images)
        t0 = time.perf_counter()
        detections = self._detect_naming_failures(pixels, names)
        return DetectedBatch(names, pixels, detections, (time.perf_counter() - t0) * 1000 / len(pixels))

    def answer(self, batch: DetectedBatch, ask: str | None = None) -> list[InspectionResult]:
        """The LMM's stage of :meth:`inspect`: the verdict, the answers, the findings and the acceptance rules
        for a batch :meth:`detect` scored (by this inspector or another loaded from the same profile)."""
        from myriad.answers_text import DEFAULT_QUESTION_TYPE, check_question, classify_question

        if ask is not None:
            check_question(ask, "ask")
        if self.detector is None:
            raise ConfigError("call fit() (or use_profile()) before answering")
        question_type = DEFAULT_QUESTION_TYPE if ask is None else classify_question(ask)
        names, pixels, detections, expert_ms = batch.names, batch.pixels, batch.detections, batch.expert_ms
        if not pixels:
            return []
        answers: list[str] = [""] * len(pixels)
        expert_decisions = ["anomalous" if d.anomalous else "normal" for d in detections]
        decisions = list(expert_decisions)
        facts = self.model is not None and self.answers == "facts"
        lmm_ms = 0.0
        margins: list[float | None] = [None] * len(pixels)
        sources = ["expert"] * len(pixels)
        if self.model is not None:
            from myriad.lmm.prompting import answer_decided, parse_answer
            from myriad.lmm_verdict import ask_lmm

            t1 = time.perf_counter()
            # facts: the verdict needs the first token's margin and the paper's answer only its first word, so
            # decoding stops once that word is decided (the model's own words are kept up to there)
            generation = {"max_new_tokens": 8, "stop_fn": answer_decided} if facts else {}
            answers, lmm_margins = ask_lmm(self.model, pixels, detections, None if facts else ask, self.device, **generation)
            margins = list(lmm_margins)
            labels = [parse_answer(a) for a in answers]
            if facts:  # the verdict rule decides (an LMM answer without a verdict leaves the expert's)
                from myriad.verdict import VerdictCalibration

                verdict = self.verdict or VerdictCalibration.uncalibrated(self.verdict_rule)
                decided = [verdict.decide(d.anomalous, m, lab) for d, m, lab in zip(detections, margins, labels)]
                decisions = ["anomalous" if anomalous else "normal" for anomalous, _ in decided]
                sources = [source for _, source in decided]
            else:  # a junk text ("No, no, no.") is withheld, and so is the verdict it seems to give
                from myriad.answers_text import is_degenerate

                withheld = [lab != "unknown" and is_degenerate(a) for lab, a in zip(labels, answers)]
                decisions = [e if w else lab for w, lab, e in zip(withheld, labels, expert_decisions)]
                sources = ["expert" if w else ("both" if lab == e else "lmm")
                           for w, lab, e in zip(withheld, labels, expert_decisions)]
            lmm_ms = (time.perf_counter() - t1) * 1000 / len(pixels)
        verdict_rate = self.verdict_false_alarm_rate if facts else None
        results = []
        few_shot = self._few_shot
        for name, image, det, answer, decision, expert_decision, margin, source in zip(
            names, pixels, detections, answers, decisions, expert_decisions, margins, sources
        ):
            findings, located_map = _measure(det, image, decision if facts else None, few_shot=few_shot)
            grounded = _compose(findings, question_type)
            before, rule = None, ""
            if self.rules is not None:
                outcome = self._apply_rules(decision, det.score, findings, located_map, image)
                before, decision, rule = decision, outcome.decision, outcome.rule
                findings = outcome.findings
            results.append(
                InspectionResult(
                    image=name,
                    expert=self.expert_name,
                    mode=self.detector.mode,
                    score=det.score,
                    threshold=DECISION_THRESHOLD,
                    expert_decision=expert_decision,
                    decision=decision,
                    answer=grounded if facts else answer,
                    timings_ms={"expert": expert_ms, "lmm": lmm_ms, "total": expert_ms + lmm_ms},
                    anomaly_map=det.anomaly_map,
                    pixels=image,
                    members=det.members,
                    findings=findings,
                    grounded_answer=grounded,
                    located_map=located_map,
                    answer_route=self.answers,
                    lmm_answer=answer,
                    false_alarm_rate=getattr(det, "false_alarm_rate", None),
                    verdict_source=source,
                    lmm_margin=margin,
                    verdict_false_alarm_rate=verdict_rate,
                    decision_before_rules=before,
                    rule=rule,
                )
            )
        return results

    def _apply_rules(self, decision: str, score: float, findings: Any, located_map: Any, image: Any) -> Any:
        """The acceptance rules' outcome for one image (findings re-measured where an area is ignored)."""
        from myriad.acceptance import apply_rules
        from myriad.findings import measure_findings

        def remeasure(masked: Any) -> Any:
            import numpy as np

            peak = float(masked.max()) if masked.size else 0.0
            return measure_findings(masked, max(min(score, peak), 0.0) if peak < DECISION_THRESHOLD else score,
                                    peak >= DECISION_THRESHOLD, threshold=DECISION_THRESHOLD,
                                    texture_wide=False, image=image if np.asarray(image).ndim == 3 else None)

        return apply_rules(self.rules, decision, score, findings, located_map, remeasure, self._review_floor,
                           DECISION_THRESHOLD)

    def follow_up(self, result: InspectionResult, question: str, conversation: Any = None) -> tuple[str, Any]:
        """Ask a follow-up about an inspected image; returns (answer, conversation to continue).

        ConfigError (one line) for a result without an anomaly map and image (not made by
        :meth:`inspect`), and for an empty question or one over
        :data:`myriad.answers_text.MAX_QUESTION_CHARS` characters. A question outside the task
        (:func:`myriad.answers_text.classify_question` gives ``unknown``, e.g. another language)
        is not sent to the LMM: the answer is the polite grounded one ("I can only answer about
        the inspected image: ..." and the verdict), and the conversation is returned unchanged.
        With ``answers="facts"`` every follow-up is answered so, from the result's findings (the
        verdict of the first answer and the map's facts), without the LMM; the conversation is
        returned unchanged. The ``lmm`` route continues the conversation with the LMM (it needs one).
        """
        import numpy as np

        from myriad.answers_text import check_question, classify_question
        from myriad.images import resize_map

        if self.model is None and self.answers == "lmm":
            raise ConfigError("follow-up questions need the Myriad LMM (lmm='mini' or a weights path)")
        if getattr(result, "anomaly_map", None) is None or getattr(result, "pixels", None) is None:
            shown = getattr(result, "image", None) or "this result"
            raise ConfigError(
                f"{shown}: never inspected by this inspector (no anomaly map); inspect the image with inspect() first"
            )
        check_question(question)
        question_type = classify_question(question)
        if question_type == "unknown" or self.answers == "facts" or self.model is None:
            findings = result.findings
            if findings is None:
                anomalous = result.decision == "anomalous"
                located = not anomalous or result.expert_decision == "anomalous"
                findings = _measure_map(result.anomaly_map, result.score, anomalous, result.members, result.pixels, located)
            return _compose(findings, question_type), conversation
        import torch

        if conversation is None:
            size = self.model.config.prompt_generators.map_size
            amap = torch.from_numpy(resize_map(np.asarray(result.anomaly_map), size, size))[None, None]
            conversation = self.model.start_conversation(
                self.model.preprocess([result.pixels]).to(self.device), amap.to(self.device),
                false_alarm_rate=getattr(self.detector, "false_alarm_rate", None),
            )
        return self.model.chat(conversation, question), conversation

    def _detect_naming_failures(self, pixels: list["np.ndarray"], names: Sequence[str]) -> list[Any]:
        """``detector.detect(pixels)``; an expert's error is raised again naming the image at fault.

        Experts see arrays, not files, so their messages cannot name one (``a 80 x 50 image: ...``).
        When a batch fails, its images are run one at a time (only then) to find the first that fails.
        """
        from myriad.errors import ContractError, MyriadError

        try:
            return self.detector.detect(pixels)
        except ContractError:
            raise  # a plugin bug, not the image's fault; its message names the expert and the batch index
        except MyriadError as exc:
            index = getattr(exc, "index", None)
            culprit = names[0] if len(pixels) == 1 else names[index] if isinstance(index, int) and 0 <= index < len(names) else None
            if culprit is None:
                for name, image in zip(names, pixels):
                    try:
                        self.detector.detect([image])
                    except MyriadError:
                        culprit = name
                        break
            if culprit is None or str(exc).startswith(f"{culprit}:"):
                raise
            raise _renamed(exc, f"{culprit}: {exc}") from exc

    @property
    def zero_shot_only(self) -> bool:
        """Whether the expert (every member of a fusion) is zero-shot only: it can inspect without ``fit()``,
        but then nothing calibrates its scores (the identity calibration takes its raw 0.5 as the threshold)."""
        from myriad.experts import Mode
        from myriad.fusion import member_names
        from myriad.plugins import get_expert_info

        return all(get_expert_info(name).modes == (Mode.ZERO_SHOT,) for name in member_names(self.expert_name))


def _measure(
    detection: Any, image: "np.ndarray | None" = None, verdict: str | None = None, few_shot: bool = False
) -> tuple["Findings", "np.ndarray"]:
    """The findings of one :class:`~myriad.detector.Detection`, and the map they were measured on.

    For a fusion, members whose calibrated map is one value over the whole image are image-level
    (``global``). When one of them fired and no local member did, the defect is texture-wide. When both
    kinds fired, the member with the strongest evidence (tail-evidence fusion: the rarest score among the
    normals) explains the alarm: an image-level one makes the defect texture-wide (a noisy or blurred
    image also lifts a local member's map somewhere), a local one makes it local (one-class only; few-shot
    keeps it local, see below). When a local member explains it, the findings are measured on the maps of
    the local members that fired: an image-level member that fired too would otherwise lift the fused map
    above the threshold everywhere and hide where the local defect is. With ``image``, the findings hold a measured kind.
    ``verdict`` (``anomalous`` / ``normal``) replaces the expert's decision (the LMM's, route ``facts``); an
    anomalous verdict over an image the expert did not flag gives findings that are not located.
    ``few_shot``: the fusion fits on a few references; an image-level member firing alone is then not
    taken to mean texture-wide (it fires on local defects and normal images too): the findings are not
    located, for that reason (:data:`myriad.findings.IMAGE_LEVEL_ONLY`).
    """
    import numpy as np

    from myriad.findings import IMAGE_LEVEL_ONLY, measure_findings

    anomalous = detection.anomalous if verdict is None else verdict == "anomalous"
    members, maps = detection.members or {}, getattr(detection, "member_maps", None) or {}
    located = not anomalous or detection.anomalous  # the LMM's Yes over a map the expert calls normal: nothing to measure
    if not located or not members or set(maps) != set(members):
        findings = _measure_map(detection.anomaly_map, detection.score, anomalous, detection.members, image, located)
        return findings, detection.anomaly_map
    image_level = {n for n, m in maps.items() if float(np.ptp(m)) <= 1e-6}
    fired = {n for n, m in members.items() if m.get("anomalous")}
    local_fired = sorted(fired - image_level)
    if local_fired and fired & image_level and not few_shot and _strongest(members, fired) in image_level:
        local_fired = []  # the image-level member's evidence explains the alarm: texture-wide
    anomaly_map = np.maximum.reduce([maps[n] for n in local_fired]) if local_fired else detection.anomaly_map
    texture_wide = bool(fired & image_level) and not local_fired
    if texture_wide and few_shot:
        findings = measure_findings(anomaly_map, detection.score, anomalous, threshold=DECISION_THRESHOLD,
                                    located=False, unlocated_reason=IMAGE_LEVEL_ONLY)
        return findings, anomaly_map
    findings = measure_findings(
        anomaly_map, detection.score, anomalous, threshold=DECISION_THRESHOLD, texture_wide=texture_wide, image=image
    )
    return findings, anomaly_map


def _heldout_calibrated(detector: Any) -> "np.ndarray | None":
    """The calibrated scores of the held-out normals the expert was calibrated on (None when it kept none)."""
    import numpy as np

    members = getattr(detector, "members", None)
    if members is None:
        calibrator = getattr(detector, "calibrator", None)
        if calibrator is None or not calibrator.heldout:
            return None
        return np.asarray(calibrator.apply(np.asarray(calibrator.heldout, dtype=np.float64)), dtype=np.float64)
    fused = getattr(detector, "fused_calibrator", None)
    held = [m.calibrator.heldout if m.calibrator is not None else None for m in members]
    if fused is None or any(not h for h in held):
        return None
    from myriad.tail_evidence import heldout_evidence

    return np.asarray(fused.apply(heldout_evidence(held)), dtype=np.float64)


def _strongest(members: dict[str, dict[str, Any]], fired: set[str]) -> str | None:
    """The fired member with the largest tail evidence; None when the fusion records no evidence (max rule)."""
    evidence = {name: members[name].get("evidence") for name in fired}
    if any(value is None for value in evidence.values()):
        return None
    return max(sorted(evidence), key=lambda name: float(evidence[name]))  # type: ignore[arg-type]


def _measure_map(
    anomaly_map: Any,
    score: float,
    anomalous: bool,
    members: dict[str, dict[str, Any]] | None,
    image: "np.ndarray | None" = None,
    located: bool = True,
) -> "Findings":
    from myriad.findings import measure_findings, texture_wide_from_members

    return measure_findings(
        anomaly_map, score, anomalous, threshold=DECISION_THRESHOLD, texture_wide=texture_wide_from_members(members),
        image=image, located=located,
    )


def _compose(findings: "Findings", question_type: str) -> str:
    from myriad.answers_text import compose_answer

    return compose_answer(findings, question_type)


def _renamed(exc: Exception, message: str) -> Exception:
    """An error of ``exc``'s class with ``message`` (a plain :class:`MyriadError` when that class cannot be built so)."""
    from myriad.errors import MyriadError

    try:
        return type(exc)(message)
    except TypeError:
        return MyriadError(message)
