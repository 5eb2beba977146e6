"""Answers and follow-up questions with the real mini LMM, loaded once and shared by every profile."""

from __future__ import annotations

import json

import pytest

from .conftest import FAST_PATCHCORE, SINGLE, uploads

from fastapi.testclient import TestClient  # noqa: E402

from myriad.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(mini_lmm):
    with TestClient(create_app(expert=SINGLE, model=mini_lmm, ui=False), base_url="http://localhost") as c:
        yield c


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
