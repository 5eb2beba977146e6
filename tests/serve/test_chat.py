"""Answers and follow-up questions with the real mini LMM, loaded once and shared by every profile."""

from __future__ import annotations

import json

import pytest

from .conftest import FAST_PATCHCORE, SINGLE, uploads

from fastapi.testclient import TestClient  # noqa: E402

from myriad.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(mini_lmm):
    """A server on the paper's answer route: the LMM's own text, follow-ups continue its conversation."""
    with TestClient(create_app(expert=SINGLE, model=mini_lmm, ui=False, answers="lmm"), base_url="http://localhost") as c:
        yield c


def test_the_facts_route_answers_with_the_lmm_verdict_and_the_map_facts(mini_lmm, samples):
    """The default route: the LMM gives the verdict (the expert's stands when its text has none: this one is
    untrained); answers and follow-ups state the map's facts at that verdict."""
    from myriad.lmm.prompting import parse_answer

    with TestClient(create_app(expert=SINGLE, model=mini_lmm, ui=False), base_url="http://localhost") as c:
        assert c.post("/api/profiles/p", files=uploads(samples["normal"]), data={"config": json.dumps(FAST_PATCHCORE)}).status_code == 201
        for path in (samples["defect"][0], samples["good"][0]):
            record = c.post("/api/profiles/p/inspect", files=uploads([path], "file"), data={"ask": "Where is it?"}).json()
            lmm_verdict = parse_answer(record["lmm_answer"])
            assert record["answer_route"] == "facts"
            assert record["decision"] == (record["expert_decision"] if lmm_verdict == "unknown" else lmm_verdict)
            assert record["answer"] == record["grounded_answer"] and parse_answer(record["answer"]) == record["decision"]
            for question in ("How large is the defect?", "What kind of defect is it?", "What could have caused it?"):
                body = c.post(f"/api/sessions/{record['session_id']}/ask", json={"question": question}).json()
                assert parse_answer(body["answer"]) == record["decision"] and body["answer_degenerate"] == []


def test_answer_then_a_conversation_kept_per_session(client, mini_lmm, samples):
    config = {"config": json.dumps(FAST_PATCHCORE)}
    for name in ("first", "second"):
        assert client.post(f"/api/profiles/{name}", files=uploads(samples["normal"]), data=config).status_code == 201
    app_service = client.app.state.service
    assert app_service.store.get_profile("first").inspector.model.wrapped is mini_lmm  # loaded once, shared
    assert app_service.store.get_profile("second").inspector.model.wrapped is mini_lmm
    assert client.get("/api/health").json()["lmm"] == "injected"

    record = client.post("/api/profiles/first/inspect", files=uploads([samples["defect"][0]], "file")).json()
    assert isinstance(record["answer"], str) and record["timings_ms"]["lmm"] > 0
    assert record["decision"] in ("anomalous", "normal", "unknown")
    session = record["session_id"]

    first = client.post(f"/api/sessions/{session}/ask", json={"question": "Where is the defect?"})
    assert first.status_code == 200, first.text
    assert isinstance(first.json()["answer"], str) and len(first.json()["turns"]) == 1
    # the grounded answer to the follow-up comes from the map's findings, worded for "where"
    findings = record["findings"]
    grounded = first.json()["grounded_answer"]
    if findings["verdict"] == "anomalous":
        assert grounded.startswith("Yes") and findings["region"] in grounded
    else:
        assert grounded.startswith("No") and "nothing to locate" in grounded
    assert first.json()["turns"][0]["grounded_answer"] == grounded
    assert isinstance(first.json()["answer_degenerate"], list)
    second = client.post(f"/api/sessions/{session}/ask", json={"question": "What could cause it?"}).json()
    assert [t["question"] for t in second["turns"]] == ["Where is the defect?", "What could cause it?"]
    assert len(app_service.store.get_session(session).conversation.turns) == 2

    other = client.post("/api/profiles/second/inspect", files=uploads([samples["good"][0]], "file")).json()["session_id"]
    third = client.post(f"/api/sessions/{other}/ask", json={"question": "Is it normal?"}).json()
    assert len(third["turns"]) == 1  # a separate conversation
    assert len(client.get(f"/api/sessions/{session}").json()["turns"]) == 2
