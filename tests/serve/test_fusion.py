"""The server's default expert is the fusion ``patchcore+global``: listing, fit and inspect through the API,
per-member client settings and operator settings, ``--false-alarm-rate``, and fusions naming a missing member."""

from __future__ import annotations

import json

import pytest

from .conftest import FAST_FUSED, FAST_PATCHCORE, png_bytes, uploads

from fastapi.testclient import TestClient  # noqa: E402

from myriad.defaults import DEFAULT_EXPERT  # noqa: E402
from myriad.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(lmm="none", ui=False), base_url="http://localhost") as c:
        yield c


@pytest.fixture(scope="module")
def fused(client, samples) -> dict:
    """A profile of the server's default expert (no ``expert`` field), fitted at 64 px."""
    response = client.post("/api/profiles/fused", files=uploads(samples["normal"]), data={"config": json.dumps(FAST_FUSED)})
    assert response.status_code == 201, response.text
    return response.json()


def inspect(client, profile: str, path):
    response = client.post(f"/api/profiles/{profile}/inspect", files=uploads([path], "file"))
    assert response.status_code == 200, response.text
    return response.json()


def test_the_default_fusion_is_the_server_default_and_listed_first(client):
    assert DEFAULT_EXPERT == "patchcore+global"
    assert client.get("/api/health").json()["default_expert"] == DEFAULT_EXPERT
    experts = client.get("/api/experts").json()
    first = experts[0]
    assert first["name"] == DEFAULT_EXPERT and first["members"] == ["patchcore", "global"]
    assert set(first["modes"]) == {"one_class", "few_shot"} and "the server's default" in first["description"]
    singles = {e["name"]: e for e in experts[1:]}
    assert {"patchcore", "global"} <= set(singles) and singles["patchcore"]["members"] is None
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert "members" in schema["InspectionOut"]["properties"] and "members" in schema["ExpertOut"]["properties"]
    assert set(schema["MemberOut"]["properties"]) == {"score", "anomalous", "mode"}


def test_fit_and_inspect_with_the_default_fusion_keeps_each_members_score(client, fused, samples):
    assert fused["expert"] == DEFAULT_EXPERT and fused["mode"] == "few_shot" and fused["num_normal"] == 3
    assert fused["config"] == FAST_FUSED
    service = client.app.state.service
    (profile,) = [p for p in service.store.list_profiles() if p.name == "fused"]
    members = profile.inspector.detector.members
    assert [m.expert_name for m in members] == ["patchcore", "global"]
    assert all(m.resolved_config()["image_size"] == 64 for m in members)  # the client's settings, per member

    good = inspect(client, "fused", samples["good"][0])
    bad = inspect(client, "fused", samples["defect"][0])
    for record in (good, bad):
        assert record["expert"] == DEFAULT_EXPERT and set(record["members"]) == {"patchcore", "global"}
        scores = [m["score"] for m in record["members"].values()]
        assert all(0.0 <= s <= 1.0 for s in scores) and 0.0 <= record["score"] <= 1.0  # the fused evidence, calibrated
        fired = any(m["anomalous"] for m in record["members"].values())  # the tail rule: a member fired the fusion
        assert record["expert_decision"] == ("anomalous" if fired else "normal")
        assert all(m["mode"] == "few_shot" for m in record["members"].values())
    assert bad["score"] > good["score"] and bad["decision"] == "anomalous"
    session = client.get(f"/api/sessions/{bad['session_id']}").json()
    assert session["inspection"]["members"] == bad["members"]


def test_a_single_expert_profile_has_no_members(client, samples):
    data = {"expert": "patchcore", "config": json.dumps(FAST_PATCHCORE)}
    assert client.post("/api/profiles/single", files=uploads(samples["normal"]), data=data).status_code == 201
    record = inspect(client, "single", samples["defect"][1])
    assert record["expert"] == "patchcore" and "members" in record and record["members"] is None


@pytest.mark.parametrize(
    ("expert", "status", "expected"),
    [
        ("patchcore+no-such-expert", 404, "unknown expert 'no-such-expert'"),
        ("no-such-expert+global", 404, "unknown expert 'no-such-expert'"),
        ("patchcore+patchcore", 422, "more than once"),
        ("patchcore+", 422, "is not an expert name"),
        ("patchcore+Glo bal", 422, "'Glo bal' is not an expert name"),
        ("+".join(["patchcore"] * 5), 422, "at most 4 experts"),
    ],
)
def test_a_fusion_with_a_missing_or_bad_member_is_a_one_line_4xx(client, samples, expert, status, expected):
    response = client.post("/api/profiles/bad", files=uploads(samples["normal"][:1]), data={"expert": expert})
    detail = response.json()["detail"]
    assert response.status_code == status and expected in detail and "\n" not in detail, detail
    if status == 404:
        assert expert in detail and "installed" in detail  # names the fusion, the missing member and what is there


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"image_size": 64}, "config.image_size: the fused expert 'patchcore+global' takes settings per member"),
        ({"patchcore": 64}, "config.patchcore: must be an object"),
        ({"patchcore": {"weights": "/proc/self/environ"}}, "config.patchcore.weights: not a setting clients may choose"),
        ({"global": {"backbone": "resnet152"}}, "config.global.backbone: not a setting clients may choose"),
        ({"global": {"image_size": 2048}}, "config.global.image_size: 2048 is outside 32 to 512"),
        ({"global": {"num_threads": 64}}, "config.global.num_threads: not a setting"),
    ],
)
def test_the_client_allow_list_applies_per_member(client, samples, config, expected):
    response = client.post("/api/profiles/cfg", files=uploads(samples["normal"][:1]), data={"config": json.dumps(config)})
    assert response.status_code == 422 and response.json()["detail"].startswith(expected), response.json()


def test_operator_settings_per_member_and_a_false_alarm_rate():
    from myriad.testing import synthetic_images

    operator = {"global": {"image_size": 64}, DEFAULT_EXPERT: {"patchcore": {"image_size": 64, "progress": False}}}
    app = create_app(lmm="none", ui=False, expert_config=operator, false_alarm_rate=0.05)
    normals = [("files", (f"n{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(synthetic_images(10, 64, seed=4))]
    with TestClient(app, base_url="http://localhost") as c:
        assert c.get("/api/health").json()["false_alarm_rate"] == 0.05
        few = c.post("/api/profiles/few", files=normals[:3])
        assert few.status_code == 422 and "false-alarm rate needs at least 10 held-out normal" in few.json()["detail"]
        response = c.post("/api/profiles/op", files=normals)
        assert response.status_code == 201, response.text
        assert response.json()["config"] == {}  # the client gave none: the operator's settings are not echoed
    (profile,) = app.state.service.store.list_profiles()
    assert profile.inspector.false_alarm_rate == 0.05
    record = profile.inspector.detector.calibration_record()["members"]
    for name, member in zip(("patchcore", "global"), profile.inspector.detector.members):
        assert member.resolved_config()["image_size"] == 64
        assert "false-alarm-rate=0.025" in record[name]["method"]  # the rate split between the two members
