"""The REST API through FastAPI's test client: fit, inspect, overlay, limits, errors, folders, parallel requests."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import FAST_PATCHCORE, SINGLE, png_bytes, uploads

from fastapi.testclient import TestClient  # noqa: E402

from myriad.serve.app import create_app  # noqa: E402
from myriad.serve.limits import Limits  # noqa: E402

CONFIG = {"config": json.dumps(FAST_PATCHCORE)}
LIMITS = Limits(max_upload_bytes=64 * 1024, max_files=6, max_side=512, max_pixels=300 * 300)


@pytest.fixture(scope="module")
def app(tmp_path_factory, samples):
    root = tmp_path_factory.mktemp("data-root")
    (root / "good").mkdir()
    for p in samples["normal"]:
        (root / "good" / p.name).write_bytes(p.read_bytes())
    return create_app(expert=SINGLE, lmm="none", ui=False, limits=LIMITS, data_root=root, max_sessions=64)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url="http://localhost") as c:
        yield c


@pytest.fixture(scope="module")
def fitted(client, samples) -> str:
    response = client.post("/api/profiles/parts", files=uploads(samples["normal"]), data=CONFIG)
    assert response.status_code == 201, response.text
    return "parts"


def inspect(client, profile: str, path: Path, **data):
    return client.post(f"/api/profiles/{profile}/inspect", files=uploads([path], "file"), data=data)


def test_health_experts_and_schema(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["lmm"] == "none" and health["default_expert"] == "patchcore"
    experts = {e["name"]: e for e in client.get("/api/experts").json()}
    assert "few_shot" in experts["patchcore"]["modes"]
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/health", "/api/experts", "/api/profiles/{name}", "/api/profiles/{name}/inspect",
                 "/api/sessions/{session_id}/overlay.png", "/api/sessions/{session_id}/ask"):
        assert path in paths
    assert client.get("/docs").status_code == 200
    assert client.get("/", follow_redirects=False).headers["location"] == "/docs"


def test_fit_then_inspect_gives_scores_decisions_and_overlay(client, fitted, samples):
    profile = client.get(f"/api/profiles/{fitted}").json()
    assert profile["expert"] == "patchcore" and profile["mode"] == "few_shot" and profile["num_normal"] == 3
    assert profile["config"] == FAST_PATCHCORE
    good = inspect(client, fitted, samples["good"][0]).json()
    bad = inspect(client, fitted, samples["defect"][0]).json()
    for record in (good, bad):
        assert record["threshold"] == 0.5 and record["answer"] == "" and record["decision"] == record["expert_decision"]
        assert {"expert", "lmm", "total", "overlay"} <= set(record["timings_ms"])
    assert good["image"] == "good0.png" and bad["image"] == "defect0.png"
    assert bad["score"] > good["score"] and bad["decision"] == "anomalous"
    assert bad["findings"]["verdict"] == "anomalous" and bad["findings"]["count"] >= 1 and bad["findings"]["region"]
    assert good["findings"]["verdict"] == good["expert_decision"]
    assert bad["grounded_answer"].startswith("Yes, there is an anomaly")  # the default question: describe
    assert "findings" in client.get("/openapi.json").json()["components"]["schemas"]["InspectionOut"]["properties"]
    png = client.get(bad["overlay_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)
    session = client.get(f"/api/sessions/{bad['session_id']}").json()
    assert session["inspection"]["score"] == bad["score"] and session["turns"] == []


def test_unknown_profile_session_and_expert(client, samples):
    response = inspect(client, "nope", samples["good"][0])
    assert response.status_code == 404 and "unknown profile 'nope'" in response.json()["detail"]
    assert client.get(f"/api/sessions/{'0' * 32}/overlay.png").status_code == 404
    assert client.get("/api/sessions/0123/overlay.png").status_code == 422
    response = client.post("/api/profiles/x", files=uploads(samples["normal"]), data={"expert": "no-such-expert"})
    assert response.status_code == 404
    assert "no-such-expert" in response.json()["detail"] and "patchcore" in response.json()["detail"]
    response = client.post("/api/profiles/bad%20name", files=uploads(samples["normal"]))
    assert response.status_code == 422 and response.json()["detail"].startswith("name: String should match pattern")


def test_upload_limits_and_bad_images_are_named(client, fitted, samples, tmp_path):
    big = tmp_path / "huge-noise.png"
    big.write_bytes(png_bytes(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)))
    assert big.stat().st_size > LIMITS.max_upload_bytes
    response = inspect(client, fitted, big)
    assert response.status_code == 413 and "huge-noise.png" in response.json()["detail"]

    wide = tmp_path / "wide.png"
    wide.write_bytes(png_bytes(np.zeros((16, 600, 3), dtype=np.uint8)))
    response = inspect(client, fitted, wide)
    assert response.status_code == 422
    assert "wide.png" in response.json()["detail"] and "600 x 16" in response.json()["detail"] and "512" in response.json()["detail"]

    area = tmp_path / "area.png"
    area.write_bytes(png_bytes(np.zeros((400, 400, 3), dtype=np.uint8)))
    response = inspect(client, fitted, area)
    assert response.status_code == 422 and "area.png" in response.json()["detail"]

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    response = inspect(client, fitted, broken)
    assert response.status_code == 422 and "broken.png" in response.json()["detail"]

    response = client.post("/api/profiles/many", files=uploads(samples["normal"] * 3), data=CONFIG)
    assert response.status_code == 413 and "limit is 6" in response.json()["detail"]
    response = client.post("/api/profiles/none", data=CONFIG)
    assert response.status_code == 422 and "no normal images" in response.json()["detail"]
    response = client.post("/api/profiles/cfg", files=uploads(samples["normal"]), data={"config": "{oops"})
    assert response.status_code == 422 and "not valid JSON" in response.json()["detail"]
    response = client.post("/api/profiles/cfg", files=uploads(samples["normal"]), data={"config": '{"image_size": 3}'})
    assert response.status_code == 422 and "image_size" in response.json()["detail"]

    body = client.post(
        f"/api/profiles/{fitted}/inspect", content=b"x" * 10, headers={"content-length": str(LIMITS.max_request_bytes + 1)}
    )
    assert body.status_code == 413 and "over the limit" in body.json()["detail"]


def test_follow_up_without_lmm_answers_from_the_map(client, fitted, samples):
    """The default answer route (facts) answers follow-ups from the verdict and the map, so --lmm none can too."""
    inspected = inspect(client, fitted, samples["good"][1]).json()
    session = inspected["session_id"]
    for question in ("Where is the defect?", "How many defects are there?", "Wo ist der Fehler?"):
        response = client.post(f"/api/sessions/{session}/ask", json={"question": question})
        assert response.status_code == 200, response.text
        body = response.json()
        verdict = "Yes" if inspected["decision"] == "anomalous" else "No"
        assert verdict in body["answer"].split(".")[0] and body["answer"] == body["grounded_answer"]
        assert body["answer_degenerate"] == []
    assert client.post(f"/api/sessions/{session}/ask", json={"question": ""}).status_code == 422


def test_follow_up_of_the_lmm_route_without_lmm_is_a_clear_conflict(samples, tmp_path):
    app = create_app(expert=SINGLE, lmm="none", ui=False, limits=LIMITS, answers="lmm")
    with TestClient(app, base_url="http://localhost") as lmm_client:
        assert lmm_client.post("/api/profiles/p", files=uploads(samples["normal"]), data=CONFIG).status_code == 201
        session = inspect(lmm_client, "p", samples["good"][1]).json()["session_id"]
        response = lmm_client.post(f"/api/sessions/{session}/ask", json={"question": "Where is the defect?"})
    assert response.status_code == 409 and "--lmm none" in response.json()["detail"]


def test_profile_from_a_server_side_folder(client, samples):
    response = client.post("/api/profiles/from-folder", data={"folder": "good", **CONFIG})
    assert response.status_code == 201, response.text
    assert response.json()["num_normal"] == 3
    assert client.post("/api/profiles/escape", data={"folder": "../"}).status_code == 403
    response = client.post("/api/profiles/missing", data={"folder": "nothing-here"})
    assert response.status_code == 404 and "nothing-here" in response.json()["detail"]
    response = client.post("/api/profiles/both", files=uploads(samples["normal"]), data={"folder": "good"})
    assert response.status_code == 422


def test_a_transductive_zero_shot_expert_without_normals_is_refused_at_fit(client):
    """MuSc scores images against each other: with no control normals it could never inspect one image (issue 29)."""
    if "musc" not in [e["name"] for e in client.get("/api/experts").json()]:
        pytest.skip("the musc plugin is not installed")
    response = client.post("/api/profiles/zero", data={"expert": "musc"})
    assert response.status_code == 422, response.text
    assert "scores images against each other" in response.json()["detail"] and "at least 2 normal images" in response.json()["detail"]
    assert "zero" not in [p["name"] for p in client.get("/api/profiles").json()]


def test_folders_are_off_without_a_data_root(samples):
    with TestClient(create_app(lmm="none", ui=False), base_url="http://localhost") as c:
        response = c.post("/api/profiles/p", data={"folder": "good"})
    assert response.status_code == 403 and "--data-root" in response.json()["detail"]


def test_parallel_requests_all_succeed_with_identical_results(client, fitted, samples):
    paths = [samples["good"][0], samples["defect"][1]] * 4

    def one(path: Path) -> tuple[str, float, str]:
        response = inspect(client, fitted, path)
        assert response.status_code == 200, response.text
        record = response.json()
        return path.name, record["score"], record["session_id"]

    def refit() -> int:
        return client.post("/api/profiles/other", files=uploads(samples["normal"][:2]), data=CONFIG).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(one, p) for p in paths] + [pool.submit(refit)]
        results = [f.result() for f in futures]
    assert results[-1] == 201
    scores: dict[str, set[float]] = {}
    for name, score, _ in results[:-1]:
        scores.setdefault(name, set()).add(score)
    assert all(len(s) == 1 for s in scores.values()), scores
    assert len({session for *_, session in results[:-1]}) == len(paths)


def test_temporary_files_are_per_request_and_removed(app, fitted, samples, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []
    original = tempfile.TemporaryDirectory

    class Spy(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(Path(self.name))

    monkeypatch.setattr(tempfile, "TemporaryDirectory", Spy)
    with TestClient(app, base_url="http://localhost") as c:
        assert inspect(c, fitted, samples["good"][0]).status_code == 200
        assert inspect(c, fitted, samples["defect"][0]).status_code == 200
    assert len(seen) == 2 and seen[0] != seen[1]
    assert all(p.parent == tmp_path and p.name.startswith("myriad-serve-") and not p.exists() for p in seen)


def test_delete_profile_and_session(client, samples):
    assert client.post("/api/profiles/temp", files=uploads(samples["normal"][:2]), data=CONFIG).status_code == 201
    session = inspect(client, "temp", samples["good"][0]).json()["session_id"]
    assert client.delete("/api/profiles/temp").status_code == 204
    assert client.get("/api/profiles/temp").status_code == 404
    assert client.get(f"/api/sessions/{session}").status_code == 200  # sessions outlive their profile
    assert client.delete(f"/api/sessions/{session}").status_code == 204
    assert client.get(f"/api/sessions/{session}").status_code == 404
    assert "temp" not in [p["name"] for p in client.get("/api/profiles").json()]


def test_store_drops_the_least_recently_used(samples):
    from myriad.serve.profiles import Profile, ProfileStore

    store = ProfileStore(max_profiles=2, max_sessions=2, per_client_profiles=2, per_client_sessions=2)
    for name in ("a", "b"):
        store.put_profile(Profile(name, "e", {}, "few_shot", 1, inspector=None))
    store.get_profile("a")
    assert store.put_profile(Profile("c", "e", {}, "few_shot", 1, inspector=None)) == ["b"]
    assert [p.name for p in store.list_profiles()] == ["a", "c"]

