"""Grounded answers: question types, the answer vocabulary, the degeneracy check, bad questions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from myriad.answers_text import (
    MAX_QUESTION_CHARS,
    ONLY_ABOUT_THE_IMAGE,
    QUESTION_TYPES,
    check_question,
    classify_question,
    compose_answer,
    degeneracy_reasons,
    is_degenerate,
)
from myriad.defect_causes import LIKELY_CAUSES, SOURCES, likely_causes
from myriad.defect_kinds import KINDS, MEASURED_KINDS
from myriad.errors import ConfigError
from myriad.findings import Findings, measure_findings
from myriad.lmm.prompting import parse_answer

#: At least 10 paraphrases per question type.
PARAPHRASES = {
    "verdict": [
        "Is there an anomaly in this image?", "Is there any defect?", "Is this part defective?",
        "Does the image show a flaw?", "Is the object normal?", "Is this sample OK?", "Is anything damaged?",
        "Are there anomalies in the picture?", "Is the product faulty?", "Is there a problem with this part?",
        "Does it pass inspection?", "Is the item abnormal?",
    ],
    "where": [
        "Where is the defect in the image?", "Where is the anomaly?", "Where can I find the flaw?",
        "What is the location of the defect?", "Which part of the image is affected?", "Locate the anomaly.",
        "In which region is the damage?", "Show me the defective spot.", "Where exactly is the problem located?",
        "What is the position of the anomaly?", "Which corner has the flaw?", "Point out the defect.",
    ],
    "how_large": [
        "How large is the defect?", "How big is the anomaly?", "What is the size of the flaw?",
        "How much of the image is affected?", "What fraction of the part is damaged?",
        "What percentage of the image does the defect cover?", "How extensive is the damage?",
        "Is the defect small?", "What is the extent of the anomaly?", "How much area does the flaw cover?",
        "What proportion of the surface is defective?",
    ],
    "how_many": [
        "How many defects are there?", "How many anomalies do you see?", "What is the number of defects?",
        "Count the defective regions.", "Are there multiple defects?", "Is there more than one anomaly?",
        "Is it a single defect?", "How many separate flaws does the part have?", "Are there several anomalies?",
        "How many damaged spots are visible?", "Is there only one defect?",
    ],
    "severity": [
        "How severe is the defect?", "What is the severity of the anomaly?", "Is the damage serious?",
        "Is this defect critical?", "How bad is the flaw?", "Is the anomaly major or minor?",
        "Is this a significant defect?", "How serious is the problem?", "Rate the severity of the defect.",
        "Is the damage severe enough to reject the part?", "How strong is the anomaly?",
    ],
    "describe": [
        "Describe the image.", "Describe the defect.", "Give me a description of the anomaly.",
        "Explain what you see in the image.", "Summarize the inspection.", "Tell me about this image.",
        "What is wrong with this part?", "What's wrong here?", "What do you see?", "Give me the details.",
        "Report your findings.", "Can you give an overview of the image?",
    ],
    "kind": [
        "What kind of defect is this?", "What type of anomaly is it?", "What type of damage do you see?",
        "Classify the defect.", "Which defect is in the image?", "What sort of flaw is it?",
        "What category does the anomaly belong to?", "Is it a scratch or a crack? What kind?",
        "Identify the defect type.", "What kinds of defects are present?", "Name the defect.",
    ],
    "cause": [
        "What caused the defect?", "Why is this part defective?", "What is the likely cause of the anomaly?",
        "Describe the defect and its likely cause.", "What could cause it?", "What is the reason for the damage?",
        "Where does the flaw come from?", "How did this happen?", "What is the root of the problem?",
        "What led to this anomaly?", "What is the origin of the defect?",
    ],
    "unknown": [
        "Gibt es einen Fehler im Bild?", "Ist das Teil normal?", "Y a-t-il un défaut dans l'image ?",
        "¿Hay algún defecto en la imagen?", "图像中有缺陷吗？", "What is the capital of France?",
        "Tell me a joke.", "Write a poem about spring.", "hello", "What time is it?", "",
    ],
}


@pytest.mark.parametrize("qtype", QUESTION_TYPES)
def test_at_least_ten_paraphrases_of_each_type_are_classified(qtype):
    questions = PARAPHRASES[qtype]
    assert len(questions) >= 10
    wrong = {q: classify_question(q) for q in questions if classify_question(q) != qtype}
    assert not wrong, wrong


def development_questions() -> list[tuple[str, str]]:
    """(type, question) of the paraphrase sets read while developing the classifier."""
    lmm = Path(__file__).resolve().parents[1] / "benchmarks" / "lmm"
    pairs = []
    for name in ("heldout_questions.json", "dev_questions.json"):
        data = json.loads((lmm / name).read_text(encoding="utf-8"))
        pairs += [(qtype, q) for qtype in QUESTION_TYPES for q in data[qtype]]
    return pairs


def test_the_development_paraphrases_are_classified():
    pairs = development_questions()
    assert len(pairs) == 2 * 12 * len(QUESTION_TYPES)
    wrong = {q: (qtype, classify_question(q)) for qtype, q in pairs if classify_question(q) != qtype}
    assert not wrong, wrong


def test_the_held_out_paraphrases_are_new():
    """The held-out set shares no question with the ones the classifier was developed on."""
    held = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "lmm" / "heldout_questions_v3.json").read_text(encoding="utf-8"))
    seen = {q.lower() for qs in PARAPHRASES.values() for q in qs} | {q.lower() for _, q in development_questions()}
    assert all(len(held[t]) >= 10 for t in QUESTION_TYPES)
    assert not [q for t in QUESTION_TYPES for q in held[t] if q.lower() in seen]


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("How many scratches are there?", "how_many"),  # a kind's name does not outrank the question asked
        ("Where is the crack?", "where"),
        ("Is this a dent?", "kind"),
        ("Did you find a flaw?", "verdict"),  # an auxiliary first: a yes / no question
        ("What did you find?", "describe"),
        ("How did this scratch occur?", "cause"),
        ("How many percent of the part is damaged?", "how_large"),
        ("Is the defect in the top left?", "where"),
        ("Recommend a good book.", "unknown"),  # a judgement word about nothing inspected
        ("Is this part good?", "verdict"),
        ("???", "unknown"),  # no word at all
        ("42", "unknown"),
    ],
)
def test_weaker_cues_decide_only_when_no_keyword_does(question, expected):
    assert classify_question(question) == expected


def findings_of(anomalous: bool) -> Findings:
    amap = np.full((128, 128), 0.1, dtype=np.float32)
    if anomalous:
        amap[10:20, 12:20] = 0.8
    return measure_findings(amap, score=0.72 if anomalous else 0.2, anomalous=anomalous)


@pytest.mark.parametrize("qtype", QUESTION_TYPES)
@pytest.mark.parametrize("anomalous", [True, False])
def test_every_answer_states_the_verdict_first_and_is_not_degenerate(qtype, anomalous):
    answer = compose_answer(findings_of(anomalous), qtype)
    body = answer[len(ONLY_ABOUT_THE_IMAGE):] if qtype == "unknown" else answer
    assert parse_answer(body) == ("anomalous" if anomalous else "normal"), answer
    assert degeneracy_reasons(answer) == [], answer
    assert (qtype == "unknown") == answer.startswith(ONLY_ABOUT_THE_IMAGE)


def test_the_answers_state_the_facts():
    f = findings_of(True)
    assert compose_answer(f, "where") == "Yes, there is an anomaly in the top left of the image."
    assert compose_answer(f, "how_large") == "Yes, there is an anomaly; it covers about 0.5 % of the image (small)."
    assert compose_answer(f, "how_many") == "Yes, there is an anomaly; I count 1 separate defective region."
    assert compose_answer(f, "severity") == "Yes, there is an anomaly; its severity is medium (calibrated score 0.72)."
    describe = compose_answer(f, "describe")
    assert all(part in describe for part in ("top left", "0.5 %", "(small)", "1 separate defective region", "medium"))
    whole = measure_findings(np.full((64, 64), 0.9, dtype=np.float32), 0.9, True)
    assert compose_answer(whole, "where") == "Yes, there is an anomaly across the whole image."
    two = Findings("anomalous", "top", 0.02, "medium", 2, "low", False, 0.6)
    assert compose_answer(two, "how_many") == "Yes, there is an anomaly; I count 2 separate defective regions."
    assert "covers about 2.0 % of the image (medium)" in compose_answer(two, "how_large")
    assert compose_answer(findings_of(False), "describe") == "No, there is no anomaly in the image (calibrated score 0.20)."


def test_no_kind_or_cause_is_claimed_unless_a_kind_was_measured():
    kinds = ("scratch", "crack", "hole", "stain", "contamination", "particle", "deformation", "colour", "color")
    for anomalous in (True, False):
        for qtype in QUESTION_TYPES:
            answer = compose_answer(findings_of(anomalous), qtype).lower()
            assert not any(kind in answer for kind in kinds), answer
    assert "cannot tell the kind" in compose_answer(findings_of(True), "kind")
    assert "cannot name a likely cause" in compose_answer(findings_of(True), "cause")


@pytest.mark.parametrize("kind", MEASURED_KINDS)
def test_a_measured_kind_is_named_as_likely_with_its_curated_causes(kind):
    f = replace(findings_of(True), kind=kind, kind_reason="elongated region, 5.0 x longer than wide")
    answer = compose_answer(f, "kind")
    assert answer.startswith("Yes, there is an anomaly in the top left of the image. It is likely ")
    assert "elongated region, 5.0 x longer than wide" in answer and "not a certainty" in answer
    cause = compose_answer(f, "cause")
    assert all(c in cause for c in likely_causes(kind)) and "not a diagnosis of this image" in cause
    assert "likely" in compose_answer(f, "describe")
    for qtype in QUESTION_TYPES:
        assert degeneracy_reasons(compose_answer(f, qtype)) == [], qtype


def test_every_kind_has_cited_causes():
    assert set(LIKELY_CAUSES) == set(KINDS) and set(MEASURED_KINDS) <= set(KINDS)
    for kind, (causes, sources) in LIKELY_CAUSES.items():
        assert causes and sources and set(sources) <= set(SOURCES), kind
    with pytest.raises(KeyError, match="known kinds"):
        likely_causes("rust")


JUNK = [
    "The likely cause of the following article is that it is likely that it is a product of the following "
    "components: The product of the variable is a product",
    'A:durable: "',
    "",
    "   ",
    "Yes, the product of the product of the product of the product",
    "Yes, there is an anomaly in the image in the image in the image.",
    "Yes, 这是一个缺陷。",
    "Yes, durable variable components article following transformers.",
    "the the the the the",
    "Maybe.",
    "No, no, no.",  # Myriad-mini v4's own text for an untrained question on the demo's scratched brick
]
GOOD = [
    "Yes, there exists anomalies in the image.",
    "No, there exists no anomalies in the image.",
    "Yes, there exists anomalies in the top left of the image.",
    "Yes, there is a small scratch in the bottom right of the image.",
    "No, the part looks normal.",
]


@pytest.mark.parametrize("answer", JUNK)
def test_junk_answers_are_degenerate(answer):
    assert is_degenerate(answer), degeneracy_reasons(answer)


@pytest.mark.parametrize("answer", GOOD)
def test_good_answers_are_not_degenerate(answer):
    assert not is_degenerate(answer), degeneracy_reasons(answer)


def test_degeneracy_names_its_reasons():
    assert degeneracy_reasons("") == ["empty"]
    assert "characters" in degeneracy_reasons('A:durable: "')
    assert "no verdict" in degeneracy_reasons(JUNK[0]) and "outside the vocabulary" in degeneracy_reasons(JUNK[0])
    assert degeneracy_reasons(JUNK[4]) == ["repeated n-grams", "outside the vocabulary"]
    assert degeneracy_reasons("No, no, no.") == ["repeated n-grams"]


def test_empty_and_overlong_questions_are_refused_in_one_line():
    assert check_question("  Where is the defect?  ") == "Where is the defect?"
    with pytest.raises(ConfigError, match="empty") as empty:
        check_question("   ")
    with pytest.raises(ConfigError, match=f"10000 characters; the limit is {MAX_QUESTION_CHARS}") as long:
        check_question("x" * 10_000)
    assert "\n" not in str(empty.value) + str(long.value)
    with pytest.raises(ValueError, match="unknown question type"):
        compose_answer(findings_of(True), "colour")


def test_follow_up_refuses_bad_input_politely():
    """Without loading an LMM: a stand-in model, a result never inspected, empty / long / foreign questions."""
    from myriad.inspection import InspectionResult, Inspector

    inspector = Inspector("colour-stats", lmm="none") if _has_colour_stats() else None
    if inspector is None:
        pytest.skip("the tutorial expert colour-stats is not installed")

    class NoChat:
        def chat(self, conversation, question):  # pragma: no cover - must not be reached
            raise AssertionError("the LMM must not be asked")

    inspector.model = NoChat()
    f = findings_of(True)
    bare = InspectionResult("part.png", "colour-stats", "few_shot", 0.72, 0.5, "anomalous", "anomalous", "", {})
    with pytest.raises(ConfigError, match="part.png: never inspected by this inspector") as never:
        inspector.follow_up(bare, "Where is the defect?")
    assert "\n" not in str(never.value)
    inspected = InspectionResult(
        "part.png", "colour-stats", "few_shot", 0.72, 0.5, "anomalous", "anomalous", "", {},
        anomaly_map=np.zeros((8, 8), dtype=np.float32), pixels=np.zeros((8, 8, 3), dtype=np.uint8), findings=f,
    )
    with pytest.raises(ConfigError, match="empty"):
        inspector.follow_up(inspected, "")
    with pytest.raises(ConfigError, match="the limit is 1000"):
        inspector.follow_up(inspected, "Where? " * 2000)
    answer, conversation = inspector.follow_up(inspected, "Gibt es einen Fehler im Bild?")
    assert answer == ONLY_ABOUT_THE_IMAGE + "Yes, there is an anomaly in the top left of the image."
    assert conversation is None


def _has_colour_stats() -> bool:
    from myriad.errors import UnknownExpertError
    from myriad.plugins import get_expert_info

    try:
        get_expert_info("colour-stats")
    except UnknownExpertError:
        return False
    return True


def test_the_docs_show_the_curated_causes_table():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "findings.md").read_text()
    for kind, (causes, sources) in LIKELY_CAUSES.items():
        assert f"| {kind} | {'; '.join(causes)} | {', '.join(f'[{n}]' for n in sources)} |" in docs, kind
    for number, source in SOURCES.items():
        assert f"{number}. {source}" in docs


def test_an_anomaly_the_map_does_not_locate_is_not_given_a_place_size_count_or_kind():
    unlocated = measure_findings(np.full((64, 64), 0.2, dtype=np.float32), 0.42, True, located=False)
    assert unlocated.anomalous and not unlocated.located and unlocated.region is None and unlocated.count == 0
    assert unlocated.severity == "low" and unlocated.as_dict()["located"] is False
    regions = ("top", "bottom", "left", "right", "center", "whole image", "%", "region")
    for qtype in QUESTION_TYPES:
        answer = compose_answer(unlocated, qtype)
        body = answer[len(ONLY_ABOUT_THE_IMAGE):] if qtype == "unknown" else answer
        assert parse_answer(body) == "anomalous" and degeneracy_reasons(answer) == [], answer
        assert not any(word in answer for word in regions), answer
    assert "does not locate it" in compose_answer(unlocated, "where")


def test_a_few_shot_image_level_alarm_is_not_placed_across_the_whole_image():
    """Few-shot, the global member firing alone names no place: its 'whole image' claims were mostly wrong."""
    from types import SimpleNamespace

    from myriad.findings import BELOW_THRESHOLD, IMAGE_LEVEL_ONLY, WHOLE_IMAGE
    from myriad.inspection import _measure

    local = np.full((64, 64), 0.3, dtype=np.float32)
    flat = np.full((64, 64), 0.8, dtype=np.float32)
    detection = SimpleNamespace(
        anomalous=True, score=0.8, anomaly_map=np.maximum(local, flat),
        members={"patchcore": {"anomalous": False}, "global": {"anomalous": True}},
        member_maps={"patchcore": local, "global": flat},
    )
    one_class, _ = _measure(detection, few_shot=False)
    assert one_class.located and one_class.region == WHOLE_IMAGE and one_class.texture_wide
    few, _ = _measure(detection, few_shot=True)
    assert not few.located and few.unlocated_reason == IMAGE_LEVEL_ONLY and few.region is None and not few.texture_wide
    assert few.severity == "medium" and few.kind is None
    for qtype in QUESTION_TYPES:
        answer = compose_answer(few, qtype)
        body = answer[len(ONLY_ABOUT_THE_IMAGE):] if qtype == "unknown" else answer
        assert parse_answer(body) == "anomalous" and degeneracy_reasons(answer) == [], answer
        assert WHOLE_IMAGE not in answer and "under the expert's threshold" not in answer, answer
    assert "only the texture-wide expert flags it" in compose_answer(few, "where")
    # a local member that fired is located as before, few-shot too
    local[10:20, 10:20] = 0.9
    detection.members["patchcore"]["anomalous"] = True
    located, _ = _measure(detection, few_shot=True)
    assert located.located and located.region == "top left" and located.unlocated_reason == ""
    assert measure_findings(local, 0.4, True, located=False).unlocated_reason == BELOW_THRESHOLD
    with pytest.raises(ValueError, match="unlocated_reason"):
        measure_findings(local, 0.4, True, located=False, unlocated_reason="because")
