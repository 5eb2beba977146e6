"""Who may use the server: the old Gradio file-read attack replayed, Host/Origin/token checks, no server paths from clients."""

from __future__ import annotations

import json

import pytest

from .conftest import FAST_PATCHCORE, SINGLE, uploads

from fastapi.testclient import TestClient  # noqa: E402

from myriad.serve.app import create_app  # noqa: E402
from myriad.serve.security import AccessPolicy, check_bind, is_loopback  # noqa: E402

CONFIG = {"config": json.dumps(FAST_PATCHCORE)}


@pytest.fixture(scope="module")
def page_app():
    return create_app(expert=SINGLE, lmm="none")


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    path = tmp_path_factory.mktemp("secret") / "hostname"
    path.write_text("SECRET-CONTENT-4711\n")
    return path


def test_replay_of_the_gradio_file_read_attack_returns_no_file(page_app, secret):
    """The issue's repro: queue/join with a FileData path, read the queue, fetch file=<cache path>."""
    with TestClient(page_app, base_url="http://localhost") as c:
        join = c.post(
            "/ui/gradio_api/queue/join",
            json={"fn_index": 0, "trigger_id": 11, "session_hash": "s",
                  "data": ["patchcore", [], "{}", "", {"path": str(secret), "meta": {"_type": "gradio.FileData"},
                                                       "orig_name": "x.png"}, None]},
        )
        data = c.get("/ui/gradio_api/queue/data", params={"session_hash": "s"})
        answers = [join, data]
        for target in (str(secret), f"/tmp/gradio/abc/{secret.name}", "/etc/hostname"):
            answers += [c.get(f"/ui/gradio_api/file={target}"), c.get(f"/gradio_api/file={target}"),
                        c.get(f"/ui/file={target}")]
        answers += [c.get("/ui/../../../../etc/hostname"), c.get("/ui/%2e%2e/%2e%2e/%2e%2e/etc/hostname"),
                    c.get("/ui/..%2f..%2f..%2fetc%2fhostname")]
    for answer in answers:
        assert answer.status_code in (404, 405), (answer.request.url, answer.status_code)
        assert "SECRET-CONTENT" not in answer.text and str(secret) not in answer.text


def test_the_page_is_only_static_files_with_a_strict_policy(page_app):
    from myriad.serve.page import ELEMENT_IDS, STATIC_FILES, static_dir

    with TestClient(page_app, base_url="http://localhost") as c:
        assert c.get("/", follow_redirects=False).headers["location"] == "/ui/"
        page = c.get("/ui/")
        for name in STATIC_FILES:
            assert c.get(f"/ui/{name}").status_code == 200
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    for element in ELEMENT_IDS:
        assert f'id="{element}"' in page.text, element
    assert sorted(p.name for p in static_dir().iterdir()) == sorted(STATIC_FILES)
    script = (static_dir() / "app.js").read_text()
    assert "/api/profiles/" in script and "innerHTML" not in script  # text only: no markup from answers


def test_building_the_app_with_its_page_imports_no_gradio():
    import subprocess
    import sys

    code = "import sys; from myriad.serve.app import create_app; create_app(lmm='none'); print(sorted(m for m in sys.modules if 'gradio' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"


def test_host_header_must_name_this_server():
    app = create_app(lmm="none", ui=False)
    for base in ("http://localhost:8000", "http://127.0.0.1", "http://[::1]:9"):
        with TestClient(app, base_url=base) as c:
            assert c.get("/api/health").status_code == 200, base
    with TestClient(app, base_url="http://evil.example") as c:
        answer = c.get("/api/profiles")
    assert answer.status_code == 400 and "Host header not allowed" in answer.json()["detail"]
    policy = AccessPolicy.for_bind("10.1.2.3", ["t"], ["inspect.lan"])
    assert policy.host_allowed("10.1.2.3:8000") and policy.host_allowed("inspect.lan")
    assert not policy.host_allowed("rebind.evil.example") and not policy.host_allowed(None)
    assert not AccessPolicy.for_bind("0.0.0.0", ["t"]).host_allowed("0.0.0.0")


def test_cross_origin_state_changes_are_refused(samples):
    app = create_app(expert=SINGLE, lmm="none", ui=False)
    with TestClient(app, base_url="http://localhost:8000") as c:
        evil = c.post("/api/profiles/csrf", files=uploads(samples["normal"]), data=CONFIG,
                      headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403 and "cross-origin" in evil.json()["detail"]
        null = c.delete("/api/profiles/x", headers={"Origin": "null"})
        site = c.post("/api/profiles/x", data=CONFIG, headers={"Sec-Fetch-Site": "cross-site"})
        port = c.post("/api/profiles/x", data=CONFIG, headers={"Origin": "http://localhost:9999"})
        assert null.status_code == site.status_code == port.status_code == 403
        assert c.get("/api/profiles").json() == []  # nothing was fitted
        same = c.post("/api/profiles/mine", files=uploads(samples["normal"]), data=CONFIG,
                      headers={"Origin": "http://localhost:8000"})
        assert same.status_code == 201, same.text
        # reading is not a state change: a GET with a foreign Origin is answered (the browser keeps it from the page)
        assert c.get("/api/health", headers={"Origin": "http://evil.example"}).status_code == 200


def test_a_token_guards_every_api_route_but_health(samples):
    policy = AccessPolicy(tokens=("s3cret-a", "s3cret-b"))
    app = create_app(expert=SINGLE, lmm="none", ui=False, policy=policy)
    with TestClient(app, base_url="http://localhost") as c:
        health = c.get("/api/health")
        assert health.status_code == 200 and health.json()["token_required"] is True
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-a"}):
            answer = c.get("/api/experts", headers=headers)
            assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
            assert "Bearer" in answer.json()["detail"] and "s3cret" not in answer.text
        assert c.post("/api/profiles/p", files=uploads(samples["normal"]), data=CONFIG).status_code == 401
        a = {"Authorization": "Bearer s3cret-a"}
        b = {"Authorization": "Bearer s3cret-b"}
        assert c.get("/api/experts", headers=a).status_code == 200
        assert c.post("/api/profiles/p", files=uploads(samples["normal"]), data=CONFIG, headers=a).status_code == 201
        assert [p["name"] for p in c.get("/api/profiles", headers=a).json()] == ["p"]
        assert c.get("/api/profiles", headers=b).json() == []  # another token: another owner
        assert c.get("/api/profiles/p", headers=b).status_code == 404
        assert c.delete("/api/profiles/p", headers=b).status_code == 404
        assert c.get("/api/profiles/p", headers=a).status_code == 200
        assert c.get("/openapi.json").status_code == 200  # the schema is public, the data is not


def test_a_server_off_loopback_needs_a_token():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("::")
    check_bind("127.0.0.1", [])
    check_bind("0.0.0.0", ["t"])
    with pytest.raises(ValueError, match="--host 0.0.0.0 is reachable from the network: give a token"):
        check_bind("0.0.0.0", [])


def test_no_endpoint_takes_a_server_path_but_folder():
    """Every client-given field of the API, from its schema: only ``folder`` names something on the server."""
    with TestClient(create_app(lmm="none", ui=False), base_url="http://localhost") as c:
        schema = c.get("/openapi.json").json()
    fields = set()
    for item in schema["paths"].values():
        for operation in item.values():
            fields |= {p["name"] for p in operation.get("parameters", [])}
            for content in operation.get("requestBody", {}).get("content", {}).values():
                ref = content["schema"]["$ref"].rsplit("/", 1)[-1]
                fields |= set(schema["components"]["schemas"][ref]["properties"])
    assert fields == {"name", "session_id", "files", "folder", "expert", "config", "file", "ask", "question"}
