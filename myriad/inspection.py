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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from myriad.calibration import DECISION_THRESHOLD
from myriad.defaults import DEFAULT_EXPERT
from myriad.errors import ConfigError, WeightsError
from myriad.expert_settings import FEW_SHOT_MAX  # noqa: F401  (re-exported: few-shot up to this many normal images)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from myriad.findings import Findings

#: The shipped trainable weights of the ``mini`` preset (see myriad/weights/MODEL_CARD.md).
SHIPPED_MINI_WEIGHTS = Path(__file__).resolve().parent / "weights" / "myriad-mini.safetensors"


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
        if self.lmm_answer:
            extra["answer_route"] = self.answer_route
            extra["lmm_answer"] = self.lmm_answer
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


def choose_mode(expert: str, config: dict, num_normal: int) -> dict:
    """Pick few-shot or one-class by the number of normal images, unless the config says
    (:func:`myriad.expert_settings.resolve_config`; per member for a fused expert)."""
    from myriad.expert_settings import resolve_config

    return resolve_config(expert, config, num_normal=num_normal)


def with_device(expert: str, config: dict, device: str) -> dict:
    """``config`` with ``device`` set for every (member) expert that has a device setting and leaves it unset."""
    from myriad.expert_settings import resolve_config

    return resolve_config(expert, config, device=device)


#: LMM inference precisions. ``auto``: see :func:`resolve_precision`; ``bfloat16``: the LLM's
#: weights and activations in bfloat16; ``int8``: the LLM's linear layers in dynamic int8 (CPU).
PRECISIONS = ("auto", "float32", "bfloat16", "int8")
#: The precision ``myriad inspect / eval / serve`` use unless told otherwise.
DEFAULT_PRECISION = "auto"


def native_bfloat16(device: str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 matrix products in hardware.

    CPUs: AVX512-BF16 or AMX tiles (there oneDNN runs bf16 linear layers ~1.5-3x faster than
    float32; elsewhere bf16 is emulated and slower). CUDA: ``torch.cuda.is_bf16_supported()``.
    """
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """The concrete precision for ``precision`` on ``device``: ``auto`` becomes ``bfloat16``
    where :func:`native_bfloat16` holds, else ``float32``; the others are returned unchanged."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown LMM precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


def load_lmm(lmm: str | Path | None = "mini", device: str = "cpu", precision: str = DEFAULT_PRECISION) -> Any:
    """The Myriad model: ``"mini"`` (shipped weights), a path to trained ``mini`` weights, or None.

    The model config is read from the weights' metadata (``myriad_config``, written by
    ``myriad train``), so a model trained with changes (e.g. the chat template) loads as
    trained; files without it get the default ``mini`` config. ``precision`` (see
    :data:`PRECISIONS`): ``bfloat16`` loads the LLM in bfloat16 (the trained modules stay
    float32), ``int8`` quantises its linear layers dynamically (CPU only), ``auto`` picks
    bfloat16 where the hardware has it (:func:`resolve_precision`), else float32.
    """
    if lmm is None or lmm == "none":
        return None
    precision = resolve_precision(precision, device)
    from myriad.io import load_tensors, read_tensor_metadata
    from myriad.lmm.config import MyriadConfig, mini_config
    from myriad.lmm.model import MyriadLMM

    weights = SHIPPED_MINI_WEIGHTS if lmm == "mini" else Path(lmm)
    if not weights.is_file():
        if lmm == "mini":
            raise WeightsError(
                f"{weights}: the shipped weights of the mini preset are missing; reinstall myriad-iad or train them "
                "with `myriad train --config benchmarks/train/mini.toml`"
            )
        raise WeightsError(f"{weights}: trained Myriad weights not found")
    metadata = read_tensor_metadata(weights)
    if metadata.get("preset", "mini") != "mini":
        raise WeightsError(f"{weights}: weights of the {metadata['preset']!r} preset; only mini weights load here")
    config = mini_config()
    if "myriad_config" in metadata:
        try:
            config = MyriadConfig.model_validate_json(metadata["myriad_config"])
        except ValueError as exc:
            raise WeightsError(f"{weights}: the stored model config is invalid for this version of myriad: {exc}") from exc
    if precision == "bfloat16":
        config = config.model_copy(update={"llm_dtype": "bfloat16"})
    model = MyriadLMM.mini(config)
    try:
        model.load_trainable_state_dict(load_tensors(weights))
    except WeightsError as exc:
        raise WeightsError(f"{weights}: {exc}") from exc
    model = model.to(device).eval()
    if precision == "int8":
        model.quantize_language_model("int8")
    return model


#: How text answers are made (``Inspector(answers=...)``, ``--answers``): see :class:`Inspector`.
ANSWER_ROUTES = ("facts", "lmm")
#: The default answer route.
DEFAULT_ANSWER_ROUTE = "facts"


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
    ) -> None:
        from myriad.calibration import check_false_alarm_rate
        from myriad.fusion import member_configs

        if answers not in ANSWER_ROUTES:
            raise ConfigError(f"answers={answers!r}: choose one of {', '.join(ANSWER_ROUTES)}")
        self.answers = answers
        member_configs(expert, expert_config)  # unknown experts and misshapen fused configs fail here, before loading
        self.expert_name = expert
        self.expert_config = dict(expert_config or {})
        self.device = device
        self.false_alarm_rate = check_false_alarm_rate(false_alarm_rate)
        self.tile = tile
        self.detector: Any = None
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
        try:
            detector.fit(images, false_alarm_rate=self.false_alarm_rate)
        except ImageError as exc:  # one image at fault (e.g. another size): name its file when we know it
            index = getattr(exc, "index", None)
            if isinstance(index, int) and 0 <= index < len(normal_images) and isinstance(normal_images[index], (str, Path)):
                raise _renamed(exc, f"{normal_images[index]}: {exc}") from exc
            raise
        self.detector = detector
        return self

    @property
    def mode(self) -> str:
        """The active expert's mode."""
        if self.detector is None:
            raise ConfigError("call fit() before inspecting")
        return self.detector.mode

    def inspect(
        self, images: Sequence["np.ndarray | str | Path"], ask: str | None = None, names: Sequence[str] | None = None
    ) -> list[InspectionResult]:
        """Score a batch with the expert and answer ``ask`` (default: the paper's question) with Myriad.

        Every result also holds the map's :class:`~myriad.findings.Findings` and the ``grounded_answer``
        to ``ask`` built from them (without ``ask``: the verdict and every finding). An ``ask`` that is
        empty or over :data:`myriad.answers_text.MAX_QUESTION_CHARS` characters raises ConfigError.
        """
        import numpy as np

        from myriad.answers_text import DEFAULT_QUESTION_TYPE, check_question, classify_question
        from myriad.images import check_batch, resize_map

        if ask is not None:
            check_question(ask, "ask")
        question_type = DEFAULT_QUESTION_TYPE if ask is None else classify_question(ask)
        if self.detector is None:
            if not self.zero_shot_only:
                raise ConfigError(f"expert {self.expert_name!r} must be fitted on normal images first (fit())")
            from myriad.fusion import make_detector

            self.detector = make_detector(self.expert_name, self.expert_config, tile=self.tile)
        names = list(names) if names is not None else [str(i) if isinstance(i, (str, Path)) else f"image-{k}" for k, i in enumerate(images)]
        pixels = check_batch(images)
        t0 = time.perf_counter()
        detections = self._detect_naming_failures(pixels, names)
        expert_ms = (time.perf_counter() - t0) * 1000 / len(pixels)
        answers: list[str] = [""] * len(pixels)
        decisions = ["anomalous" if d.anomalous else "normal" for d in detections]
        lmm_ms = 0.0
        if self.model is not None:
            import torch

            from myriad.lmm.prompting import parse_answer

            t1 = time.perf_counter()
            size = self.model.config.prompt_generators.map_size
            maps = torch.from_numpy(np.stack([resize_map(d.anomaly_map, size, size) for d in detections]))[:, None]
            batch = self.model.preprocess(pixels).to(self.device)
            with torch.inference_mode():
                answers = self.model.generate(batch, maps.to(self.device), None if self.answers == "facts" else ask)
            decisions = [parse_answer(a) for a in answers]
            if self.answers == "facts":  # an LMM answer without a verdict leaves the expert's
                decisions = [e if d == "unknown" else d for d, e in zip(decisions, ("anomalous" if x.anomalous else "normal" for x in detections))]
            lmm_ms = (time.perf_counter() - t1) * 1000 / len(pixels)
        results = []
        for name, image, det, answer, decision in zip(names, pixels, detections, answers, decisions):
            expert_decision = "anomalous" if det.anomalous else "normal"
            verdict = decision if self.model is not None and self.answers == "facts" else None
            findings, located_map = _measure(det, image, verdict)
            lmm_answer = answer
            if self.model is not None and self.answers == "facts":
                answer = _compose(findings, question_type)
            results.append(
                InspectionResult(
                    image=name,
                    expert=self.expert_name,
                    mode=self.detector.mode,
                    score=det.score,
                    threshold=DECISION_THRESHOLD,
                    expert_decision=expert_decision,
                    decision=decision if self.model is not None else expert_decision,
                    answer=answer,
                    timings_ms={"expert": expert_ms, "lmm": lmm_ms, "total": expert_ms + lmm_ms},
                    anomaly_map=det.anomaly_map,
                    pixels=image,
                    members=det.members,
                    findings=findings,
                    grounded_answer=_compose(findings, question_type),
                    located_map=located_map,
                    answer_route=self.answers,
                    lmm_answer=lmm_answer if self.model is not None else "",
                )
            )
        return results

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
                findings = _measure_map(result.anomaly_map, result.score, anomalous, result.members, result.pixels)
            return _compose(findings, question_type), conversation
        import torch

        if conversation is None:
            size = self.model.config.prompt_generators.map_size
            amap = torch.from_numpy(resize_map(np.asarray(result.anomaly_map), size, size))[None, None]
            conversation = self.model.start_conversation(self.model.preprocess([result.pixels]).to(self.device), amap.to(self.device))
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
    detection: Any, image: "np.ndarray | None" = None, verdict: str | None = None
) -> tuple["Findings", "np.ndarray"]:
    """The findings of one :class:`~myriad.detector.Detection`, and the map they were measured on.

    For a fusion, members whose calibrated map is one value over the whole image are image-level
    (``global``). When one of them fired and no local member did, the defect is texture-wide. When a
    local member fired, the findings are measured on the maps of the local members that fired: an
    image-level member that fired too would otherwise lift the fused map above the threshold
    everywhere and hide where the local defect is. With ``image``, the findings hold a measured kind.
    ``verdict`` (``anomalous`` / ``normal``) replaces the expert's decision (the LMM's, route ``facts``).
    """
    import numpy as np

    from myriad.findings import measure_findings

    anomalous = detection.anomalous if verdict is None else verdict == "anomalous"
    members, maps = detection.members or {}, getattr(detection, "member_maps", None) or {}
    if not members or set(maps) != set(members):
        findings = _measure_map(detection.anomaly_map, detection.score, anomalous, detection.members, image)
        return findings, detection.anomaly_map
    image_level = {n for n, m in maps.items() if float(np.ptp(m)) <= 1e-6}
    fired = {n for n, m in members.items() if m.get("anomalous")}
    local_fired = sorted(fired - image_level)
    anomaly_map = np.maximum.reduce([maps[n] for n in local_fired]) if local_fired else detection.anomaly_map
    texture_wide = bool(fired & image_level) and not local_fired
    findings = measure_findings(
        anomaly_map, detection.score, anomalous, threshold=DECISION_THRESHOLD, texture_wide=texture_wide, image=image
    )
    return findings, anomaly_map


def _measure_map(
    anomaly_map: Any,
    score: float,
    anomalous: bool,
    members: dict[str, dict[str, Any]] | None,
    image: "np.ndarray | None" = None,
) -> "Findings":
    from myriad.findings import measure_findings, texture_wide_from_members

    return measure_findings(
        anomaly_map, score, anomalous, threshold=DECISION_THRESHOLD, texture_wide=texture_wide_from_members(members),
        image=image,
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
