"""Grounded answers: :class:`~myriad.findings.Findings` worded as short, true sentences.

Three pure functions, no model involved:

- :func:`classify_question` sorts an English question into a :data:`QUESTION_TYPES` entry by
  keywords (:data:`QUESTION_KEYWORDS`, tried in that order, then a few weaker cues); anything
  else (another language, an unrelated request) is ``unknown``.
- :func:`compose_answer` answers one question type from the findings, in the documented
  vocabulary (``docs/findings.md``): the verdict first ("Yes, ..." / "No, ...", so
  :func:`myriad.lmm.prompting.parse_answer` reads it), then the fact asked for. A kind is named
  only when one was measured (:mod:`myriad.defect_kinds`), always as "likely", and causes only
  from the curated table of :mod:`myriad.defect_causes` for that kind; otherwise the answer
  says it cannot tell.
- :func:`is_degenerate` flags answers that are junk (:func:`degeneracy_reasons` says why):
  empty, characters outside plain English text, no verdict, repeated word n-grams, or too many
  words outside the task's vocabulary (:data:`VOCABULARY`).

:func:`check_question` refuses empty and over-long questions (:data:`MAX_QUESTION_CHARS`).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Literal

from myriad.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from myriad.findings import Findings

__all__ = [
    "DEFAULT_QUESTION_TYPE",
    "MAX_QUESTION_CHARS",
    "ONLY_ABOUT_THE_IMAGE",
    "QUESTION_KEYWORDS",
    "QUESTION_TYPES",
    "QuestionType",
    "VOCABULARY",
    "check_question",
    "classify_question",
    "compose_answer",
    "degeneracy_reasons",
    "is_degenerate",
]

QuestionType = Literal["verdict", "where", "how_large", "how_many", "severity", "describe", "kind", "cause", "unknown"]
#: Every question type :func:`classify_question` returns.
QUESTION_TYPES: tuple[str, ...] = (
    "verdict", "where", "how_large", "how_many", "severity", "describe", "kind", "cause", "unknown",
)
#: The type answered when no question is asked (``Inspector.inspect`` without ``ask``): verdict and every fact.
DEFAULT_QUESTION_TYPE: QuestionType = "describe"
#: Longest question accepted, in characters.
MAX_QUESTION_CHARS = 1000
#: How an answer to a question outside the task starts; the verdict follows.
ONLY_ABOUT_THE_IMAGE = "I can only answer about the inspected image: "

#: Keywords (whole words or phrases, lower case) of each question type, tried in this order: the first
#: type with a match wins, so "How severe is the defect?" is ``severity``, not ``verdict``. A type may
#: appear twice ("how many percent" is a size, found before ``how_many``'s "how many").
QUESTION_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cause", (
        "cause", "causes", "caused", "causing", "why", "reason", "reasons", "origin", "originate", "originated",
        "root", "led to", "lead to", "leads to", "come from", "came from", "comes from", "due to", "responsible",
        "source of", "how did this happen", "how could this happen", "what happened", "explanation for",
        "produce", "produces", "produced", "create", "creates", "created", "come about", "came about",
        "result in", "results in", "resulted in", "what is behind", "what's behind",
    )),
    ("kind", (
        "kind", "kinds", "type", "types", "sort of", "category", "categories", "categorize", "categorise",
        "classify", "classification", "what defect", "which defect", "what anomaly", "which anomaly",
        "identify the defect", "name the defect", "what is the defect called", "call", "called", "nature of",
        "class of", "which class", "what class",
    )),
    ("severity", (
        "severe", "severity", "serious", "seriously", "critical", "how bad", "badly", "grave", "significant",
        "major", "minor", "dangerous", "intensity", "how strong", "how strongly", "intense", "mild", "heavy",
        "score", "grade", "rating", "urgent", "worry", "worrying", "how high",
    )),
    ("how_large", ("how many percent", "how many per cent")),
    ("how_many", (
        "how many", "number of", "count", "counted", "several", "multiple", "more than one", "single",
        "separate", "just one", "only one", "one or more", "distinct", "or more",
    )),
    ("how_large", (
        "how large", "how big", "how much", "how small", "how extensive", "how wide", "how long", "size",
        "sized", "extent", "large", "big", "small", "tiny", "fraction", "percentage", "percent", "proportion",
        "cover", "covers", "covered", "coverage", "dimension", "dimensions", "share of", "how far", "spread",
        "spreads", "take up", "takes up", "occupy", "occupies", "measure", "estimate", "is the area",
    )),
    ("where", (
        "where", "where's", "location", "located", "locate", "localize", "localise", "position", "positioned",
        "which part", "which area", "which region", "which side", "which corner", "what part", "what area",
        "what region", "whereabouts", "point out", "point to", "point me", "show me", "pinpoint", "mark",
        "indicate", "which portion", "what portion", "which section", "what section",
    )),
    ("describe", (
        "describe", "description", "detail", "details", "detailed", "explain", "summarize", "summarise",
        "summary", "tell me about", "tell me more", "what do you see", "what can you see", "what is wrong",
        "what's wrong", "report", "characterize", "characterise", "overview", "analyze", "analyse",
        "everything", "findings", "analysis", "walk me through", "say about", "the matter", "result", "results",
    )),
    ("verdict", (
        "anomaly", "anomalies", "anomalous", "abnormal", "abnormality", "defect", "defects", "defective",
        "flaw", "flaws", "flawed", "damage", "damaged", "broken", "faulty", "fault", "faults", "problem",
        "problems", "issue", "issues", "irregular", "irregularity", "error", "reject", "rejected", "scrap",
        "discard", "unusual", "out of place", "something off", "anything off", "look off", "looks off",
    )),
)

#: Words a ``describe`` request may use only as an open question ("What did the inspection find?"); after an
#: auxiliary verb the question asks for a verdict ("Did you find a flaw?").
_OPEN_DESCRIBE = ("find", "found", "see", "observe", "notice", "spot")
#: How-questions about an event ("How could this have occurred?") ask ``cause``.
_EVENTS = ("happen", "happened", "occur", "occurred", "arise", "arisen", "arose", "form", "formed", "develop", "developed")
#: Places in the image (words, or phrases for "right"): a question naming one asks ``where`` unless a keyword of
#: another type than ``verdict`` decided first ("Is the defect near the edge?").
_PLACES = ("top", "bottom", "left", "middle", "center", "centre", "edge", "edges", "corner", "corners", "side", "sides")
_PLACE_PHRASES = (" on the right ", " to the right ", " at the right ")
#: Defect kinds by name: a question naming one and none of the keywords above asks ``kind`` ("Is this a stain?").
_KIND_NAMES = (
    "scratch", "scratches", "crack", "cracks", "stain", "stains", "hole", "holes", "pinhole", "pinholes", "dent",
    "dents", "contamination", "particle", "particles", "deformation", "discoloration", "discolouration", "chip",
    "burr", "smudge", "tear", "rust", "corrosion",
)
#: Verdict words that are too common to decide alone ("Recommend a good book."): they need a word naming the
#: inspected thing ("Is this part good?", "Can we use it?").
_JUDGEMENT = (
    "normal", "ok", "okay", "good", "bad", "fine", "wrong", "pass", "fail", "accept", "accepted", "acceptable",
    "intact", "perfect", "flawless", "clean", "use", "usable", "ship", "release", "approve", "qc", "flag",
)
_INSPECTED = frozenset(
    "this it that these those part piece sample item image picture photo product unit component panel surface "
    "object one material".split()
)
_VERDICT_KEYWORDS = dict(QUESTION_KEYWORDS)["verdict"]
_AUXILIARIES = frozenset(
    "is are was were do does did can could would should will has have had may might must".split()
)

#: English function words: a question of three or more words needs one of them, so that a foreign
#: sentence sharing a keyword ("Ist das Teil normal?") is ``unknown``.
_ENGLISH = frozenset(
    "a an the is are was were be there this that these those it its what where which how why any anything "
    "does do did can could would should will you your me i of in on at with and or to for from image picture "
    "photo part please tell show give has have see here what's where's there's it's how's isn't aren't".split()
)

#: The task's words: grounded answers, the paper's answers, grid regions, extent, count, severity, the
#: defect kinds of the issue, and common English function words. An answer with more than
#: :data:`_OUT_OF_VOCABULARY_LIMIT` of its words outside it is degenerate.
VOCABULARY = frozenset(
    """
    yes no not there is are was were be been being exists exist anomaly anomalies anomalous abnormal abnormality
    normal defect defects defective flaw flaws damage damaged fault faulty problem
    a an the this that these those it its it's i we you they them their our my me
    of in on at to from with without within by for and or but so as than then also only just about around over
    under near here into across through between both each every all any some none nothing one two three four
    five six seven eight nine ten several many much more most less least few single separate
    can cannot can't could would should will may might must do does did don't doesn't has have had
    what where which how why when whether if because
    top bottom left right center centre middle upper lower corner corners side sides edge edges border borders
    whole entire half image picture photo area areas region regions part parts surface object item sample spot
    spots place places location
    covers cover covering covered small medium large big tiny size extent percent share fraction
    count severity severe low high minor major serious critical score calibrated threshold level
    scratch scratches crack cracks hole holes stain stains contamination contaminated foreign particle particles
    missing extra material deformation deformed texture change changes colour color discoloration
    discolouration dent dents bent cut likely cause causes caused possibly probably perhaps
    inspected inspection answer report tell know kind type classify measure grade locate explain
    visible appears seems looks look found find detected detect shows show see seen contains present clear
    clearly good ok okay fine intact clean perfect acceptable quality i'm
    """.split()
)


def _table_words() -> frozenset[str]:
    """Words of the kind rules' reasons and of the curated causes table (answers quote both)."""
    from myriad.defect_causes import LIKELY_CAUSES

    text = " ".join(" ".join(causes) for causes, _ in LIKELY_CAUSES.values())
    text += " " + " ".join(LIKELY_CAUSES) + " " + _REASON_WORDS
    return frozenset(re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower()))


#: Words of :func:`myriad.defect_kinds.estimate_kind`'s reasons and the answers that quote them.
_REASON_WORDS = """
elongated region longer than wide small compact darker brighter surroundings contrast another colour
faint without clear the map has no located spreads over whole image measured guess certainty not a
likely usually caused general causes kind diagnosis cannot tell name which these this is of x
smoother fine detail theirs tone shifted shift spread sharpness with change
"""
VOCABULARY = VOCABULARY | _table_words()
#: Largest share of an answer's words that may lie outside :data:`VOCABULARY`.
_OUT_OF_VOCABULARY_LIMIT = 0.15
#: Word n-grams: one of :data:`_REPEAT_LONG` words seen twice, or of :data:`_REPEAT_SHORT` words seen three
#: times, makes an answer repetitive.
_REPEAT_LONG = 4
_REPEAT_SHORT = 3
#: Characters of plain English answers: letters, digits, spaces and . , ; : % ( ) ' ? ! / -
_ALLOWED_CHARS = re.compile(r"[A-Za-z0-9\s.,;:%()'?!/\-]*")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_TYPOGRAPHIC = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})


def check_question(question: str | None, what: str = "question") -> str:
    """``question`` stripped; :class:`~myriad.errors.ConfigError` (one line) when it is empty or longer
    than :data:`MAX_QUESTION_CHARS` characters. ``what`` names it in the message."""
    text = (question or "").strip()
    if not text:
        raise ConfigError(f"{what}: the question is empty; ask about the inspected image, e.g. 'Where is the defect?'")
    if len(text) > MAX_QUESTION_CHARS:
        raise ConfigError(f"{what}: {len(text)} characters; the limit is {MAX_QUESTION_CHARS}")
    return text


def classify_question(text: str | None) -> QuestionType:
    """The question type of an English question, by keywords.

    In order: "how" with an event (``happen``, ``occur``, ...) asks ``cause``; then
    :data:`QUESTION_KEYWORDS` up to ``verdict`` (first type that matches); words of an open question
    (``find``, ``see``, ... after a question word or as a request) ask ``describe``; a place in
    the image (``top``, ``edge``, ...) asks ``where``; a defect kind by name asks ``kind``;
    ``verdict``'s keywords; a judgement (``good``, ``OK``, ``pass``, ...) about the inspected thing
    (``this``, ``part``, ...) asks ``verdict``. ``unknown``: empty text, text without a letter, letters outside
    ASCII (another language), a sentence of three or more words without an English function word, or none of these.
    """
    t = (text or "").translate(_TYPOGRAPHIC).lower().strip()
    if not t or any(ord(ch) > 127 for ch in t):
        return "unknown"
    words = _WORD.findall(t)
    if not words or (len(words) >= 3 and not _ENGLISH.intersection(words)):
        return "unknown"
    padded = " " + " ".join(words) + " "
    present = set(words)
    if words[0] == "how" and present.intersection(_EVENTS):
        return "cause"
    for qtype, keywords in QUESTION_KEYWORDS:
        if qtype == "verdict":
            break
        if any(f" {k} " in padded for k in keywords):
            return qtype  # type: ignore[return-value]
    if words[0] not in _AUXILIARIES and present.intersection(_OPEN_DESCRIBE):
        return "describe"
    if present.intersection(_PLACES) or any(p in padded for p in _PLACE_PHRASES):
        return "where"
    if present.intersection(_KIND_NAMES):
        return "kind"
    if any(f" {k} " in padded for k in _VERDICT_KEYWORDS):
        return "verdict"
    if present.intersection(_JUDGEMENT) and present.intersection(_INSPECTED):
        return "verdict"
    return "unknown"


def compose_answer(findings: "Findings", question_type: str = DEFAULT_QUESTION_TYPE) -> str:
    """The grounded answer to a question of ``question_type`` (see :data:`QUESTION_TYPES`).

    Verdict first, then the fact asked: ``where`` the region, ``how_large`` the extent, ``how_many``
    the count, ``severity`` the severity and score, ``describe`` all of them; ``kind`` the measured kind
    (or that it cannot be told), ``cause`` its curated causes; ``unknown`` starts with
    :data:`ONLY_ABOUT_THE_IMAGE`. Findings that are not located (``located=False``) say so instead of
    naming a place, size, count or kind.
    """
    if question_type not in QUESTION_TYPES:
        raise ValueError(f"unknown question type {question_type!r}; choose one of {list(QUESTION_TYPES)}")
    if not findings.anomalous:
        return _normal_answer(findings, question_type)
    if not findings.located:
        return _unlocated_answer(findings, question_type)
    located = f"Yes, there is an anomaly {_where(findings)}."
    if question_type == "verdict":
        return "Yes, there is an anomaly in the image."
    if question_type == "where":
        return located
    if question_type == "how_large":
        return f"Yes, there is an anomaly; it {_covers(findings.extent)} of the image ({findings.extent_bucket})."
    if question_type == "how_many":
        return f"Yes, there is an anomaly; I count {_regions(findings.count)}."
    if question_type == "severity":
        return f"Yes, there is an anomaly; its severity is {findings.severity} (calibrated score {findings.score:.2f})."
    if question_type == "describe":
        return (
            f"{located} It {_covers(findings.extent)} of its area ({findings.extent_bucket}) in "
            f"{_regions(findings.count)}, and its severity is {findings.severity} (calibrated score {findings.score:.2f})."
            + (f" It is likely {_with_article(findings.kind)}." if findings.kind else "")
        )
    if question_type == "kind":
        if not findings.kind:
            why = f": {findings.kind_reason}" if findings.kind_reason else ""
            return f"{located} I cannot tell the kind of defect from the map and the image{why}."
        return (
            f"{located} It is likely {_with_article(findings.kind)}: {findings.kind_reason}. "
            "This is a measured guess, not a certainty."
        )
    if question_type == "cause":
        if not findings.kind:
            return f"{located} I cannot tell its kind, so I cannot name a likely cause."
        from myriad.defect_causes import likely_causes

        causes = likely_causes(findings.kind)
        listed = causes[0] if len(causes) == 1 else "; ".join(causes[:-1]) + "; or " + causes[-1]
        return (
            f"{located} It is likely {_with_article(findings.kind)}, which is usually caused by: {listed}. "
            "These are general causes of this kind, not a diagnosis of this image."
        )
    return ONLY_ABOUT_THE_IMAGE + located


#: The anomalous verdict without a located defect (the LMM's Yes over a map the expert calls normal).
_UNLOCATED = "Yes, there is an anomaly, but the expert's map does not {what} it: no area passes its threshold"
_UNLOCATED_WHAT = {"where": "locate", "how_large": "measure", "how_many": "count", "describe": "locate or measure"}


#: Only an image-level member fired, on few references: it judges the image as a whole and cannot say where.
_IMAGE_LEVEL = (
    "Yes, there is an anomaly, but only the texture-wide expert flags it: it judges the image as a whole, and with "
    "few references it cannot {what} it"
)


def _unlocated_answer(findings: "Findings", question_type: str) -> str:
    from myriad.findings import IMAGE_LEVEL_ONLY

    score = f"calibrated score {findings.score:.2f}"
    if question_type in _UNLOCATED_WHAT:
        template = _IMAGE_LEVEL if findings.unlocated_reason == IMAGE_LEVEL_ONLY else _UNLOCATED
        return template.format(what=_UNLOCATED_WHAT[question_type]) + f" ({score})."
    if question_type == "severity":
        if findings.unlocated_reason == IMAGE_LEVEL_ONLY:
            return f"Yes, there is an anomaly; its severity is {findings.severity} ({score})."
        return f"Yes, there is an anomaly; its severity is {findings.severity} ({score}, under the expert's threshold)."
    if question_type == "kind":
        return "Yes, there is an anomaly, but I cannot tell its kind: the expert's map does not locate it."
    if question_type == "cause":
        return "Yes, there is an anomaly, but I cannot tell its kind, so I cannot name a likely cause."
    answer = "Yes, there is an anomaly in the image."
    return ONLY_ABOUT_THE_IMAGE + answer if question_type == "unknown" else answer


_NORMAL = "No, there is no anomaly in the image"
_NORMAL_TAIL = {
    "verdict": ".",
    "where": ", so there is nothing to locate.",
    "how_large": ", so there is nothing to measure.",
    "how_many": ", so I count no defective region.",
    "kind": ", so there is no defect to classify.",
    "cause": ", so there is no defect cause to explain.",
    "unknown": ".",
}


def _normal_answer(findings: "Findings", question_type: str) -> str:
    if question_type in ("severity", "describe"):
        return f"{_NORMAL} (calibrated score {findings.score:.2f})."
    answer = _NORMAL + _NORMAL_TAIL[question_type]
    return ONLY_ABOUT_THE_IMAGE + answer if question_type == "unknown" else answer


def _where(findings: "Findings") -> str:
    from myriad.findings import WHOLE_IMAGE

    return WHOLE_IMAGE if findings.region == WHOLE_IMAGE else f"in the {findings.region} of the image"


def _covers(extent: float) -> str:
    """``covers about 0.4 %`` (one decimal under 10 %, whole percent above; ``less than 0.1 %`` below that)."""
    percent = 100.0 * extent
    if percent < 0.1:
        return "covers less than 0.1 %"
    return f"covers about {percent:.1f} %" if percent < 10 else f"covers about {percent:.0f} %"


#: How each kind reads after "It is likely ...".
_KIND_PHRASES = {
    "contamination / foreign particle": "contamination or a foreign particle",
    "missing or extra material": "missing or extra material",
    "texture change": "a change of texture",
    "colour change": "a change of colour",
    "deformation": "a deformation",
}


def _with_article(kind: str) -> str:
    """``a scratch``, ``contamination or a foreign particle``, ... for a kind of :data:`myriad.defect_kinds.KINDS`."""
    return _KIND_PHRASES.get(kind, f"a {kind}")


def _regions(count: int) -> str:
    return f"{count} separate defective region" + ("" if count == 1 else "s")


def degeneracy_reasons(answer: str) -> list[str]:
    """Why ``answer`` is degenerate (empty list: it is not).

    The checks: ``empty``; ``characters`` outside plain English text (letters, digits, spaces and
    ``. , ; : % ( ) ' ? ! / -``); ``no verdict`` (the answer, after :data:`ONLY_ABOUT_THE_IMAGE`,
    does not start with Yes / No by :func:`myriad.lmm.prompting.parse_answer`); ``repeated n-grams``
    (a 4-word sequence twice, a 3-word sequence three times, or one word three times in a row, as in
    "No, no, no."); ``outside the vocabulary`` (more
    than 15 % of its words not in :data:`VOCABULARY`).
    """
    from myriad.lmm.prompting import parse_answer

    text = answer.translate(_TYPOGRAPHIC).strip()
    if not text:
        return ["empty"]
    reasons = []
    if not _ALLOWED_CHARS.fullmatch(text):
        reasons.append("characters")
    prefix = ONLY_ABOUT_THE_IMAGE.strip()
    body = text[len(prefix):] if text.startswith(prefix) else text
    if parse_answer(body) == "unknown":
        reasons.append("no verdict")
    tokens = _TOKEN.findall(text.lower())
    if _repeats(tokens, _REPEAT_LONG, 2) or _repeats(tokens, _REPEAT_SHORT, 3) or _stutters(tokens):
        reasons.append("repeated n-grams")
    words = _WORD.findall(text.lower())
    outside = sum(w not in VOCABULARY for w in words)
    if words and outside / len(words) > _OUT_OF_VOCABULARY_LIMIT:
        reasons.append("outside the vocabulary")
    return reasons


def is_degenerate(answer: str) -> bool:
    """Whether ``answer`` is junk by any check of :func:`degeneracy_reasons`."""
    return bool(degeneracy_reasons(answer))


def _stutters(tokens: list[str]) -> bool:
    """Whether one token occurs three times in a row."""
    return any(tokens[i] == tokens[i + 1] == tokens[i + 2] for i in range(len(tokens) - 2))


def _repeats(tokens: list[str], n: int, times: int) -> bool:
    """Whether some ``n``-token sequence occurs at least ``times`` times in ``tokens``."""
    grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return bool(grams) and max(grams.values()) >= times
