"""Hostile requests get a one-line JSON 4xx, never a 500: streamed bodies, bombs, odd folders, formats, links, configs."""

from __future__ import annotations

import json
import os

import pytest

from .conftest import FAST_PATCHCORE, SINGLE, uploads
from .crafted import bmp_header, chunked_inspect_upload, eps_file, png_header

from fastapi.testclient import TestClient  # noqa: E402

from myriad.serve.app import create_app  # noqa: E402
from myriad.serve.limits import Limits  # noqa: E402

CONFIG = {"config": json.dumps(FAST_PATCHCORE)}
LIMITS = Limits(max_upload_bytes=64 * 1024, max_files=4, max_side=512, max_pixels=300 * 300)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, samples):
    root = tmp_path_factory.mktemp("root")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "stolen.png").write_bytes(samples["normal"][0].read_bytes())
    (root / "good").mkdir()
    (root / "linked").mkdir()
    for p in samples["normal"]:
        (root / "good" / p.name).write_bytes(p.read_bytes())
        (root / "linked" / p.name).write_bytes(p.read_bytes())
    os.symlink(outside / "stolen.png", root / "linked" / "zz-link.png")
    os.symlink(outside, root / "dirlink")
    return root


@pytest.fixture(scope="module")
def app(data_root):
    return create_app(expert=SINGLE, lmm="none", ui=False, limits=LIMITS, data_root=data_root)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url="http://localhost") as c:
        yield c


@pytest.fixture(scope="module")
def fitted(client, samples) -> str:
    assert client.post("/api/profiles/parts", files=uploads(samples["normal"]), data=CONFIG).status_code == 201
    return "parts"


def one_line_4xx(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and len(detail) < 700
    return detail


def test_a_chunked_upload_is_cut_off_while_it_streams(app):
    """No Content-Length: the body is counted as it arrives and refused once over the limit; the rest is never read."""
    pulled, status, detail = chunked_inspect_upload(app, total_chunks=16 * 1024)  # 1 GiB offered
    assert status == 413 and "over the limit" in detail
    assert pulled * 65536 <= LIMITS.max_request_bytes + 2 * 65536


def test_declared_oversized_body_is_refused_before_reading(client, fitted):
    response = client.post(f"/api/profiles/{fitted}/inspect", content=b"x" * 10,
                           headers={"content-length": str(LIMITS.max_request_bytes + 1)})
    assert "over the limit" in one_line_4xx(response, 413)


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("bomb.png", png_header(50000, 50000), "bomb.png: image too large"),  # 50000 x 50000 in a few hundred bytes
        ("wide.bmp", bmp_header(30000, 30000), "wide.bmp: image too large"),
        ("tall.png", png_header(16, 5000), "tall.png: the image is 16 x 5000 pixels; the limit is 512 pixels per side"),
        ("drawing.eps", eps_file(), "drawing.eps: not a readable image"),
        ("drawing.png", eps_file(), "drawing.png: not a readable image"),
        ("nul\x00name.png", b"\x89PNG\r\n\x1a\n", "name.png: not a readable image"),
    ],
)
def test_hostile_images_are_refused_from_the_header(client, fitted, name, data, expected):
    response = client.post(f"/api/profiles/{fitted}/inspect", files=[("file", (name, data, "image/png"))])
    assert expected in one_line_4xx(response, 422)


def test_eps_never_reaches_ghostscript(client, fitted, monkeypatch):
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    response = client.post(f"/api/profiles/{fitted}/inspect", files=[("file", ("x.eps", eps_file(), "application/postscript"))])
    assert response.status_code == 422 and calls == []


@pytest.mark.parametrize(
    ("folder", "status", "expected"),
    [
        ("good\x00/../..", 422, "NUL or other control characters"),
        ("a" * 5000, 422, "give 1 to 1024 characters (got 5000)"),
        ("x" * 300, 422, "over 255 bytes"),
        ("../", 403, "outside the server's data root"),
        ("/etc", 403, "outside the server's data root"),
        ("dirlink", 403, "outside the server's data root"),
        ("linked", 403, "linked/zz-link.png: a link to a file outside the server's data root"),
    ],
)
def test_odd_folders_are_clear_4xx(client, folder, status, expected):
    response = client.post("/api/profiles/f", data={"folder": folder, **CONFIG})
    assert expected in one_line_4xx(response, status)


def test_a_plain_folder_still_works(client):
    response = client.post("/api/profiles/from-folder", data={"folder": "good", **CONFIG})
    assert response.status_code == 201 and response.json()["num_normal"] == 3


def test_validation_errors_are_one_string_and_never_echo_the_input(client, fitted):
    huge = "Q" * 100_000
    too_big = client.post("/api/sessions/abc/ask", json={"question": huge})  # over the JSON route's 64 KiB body limit
    assert "QQQQQQQQQQ" not in one_line_4xx(too_big, 413)
    answers = [
        client.post("/api/sessions/abc/ask", json={"question": huge[:20_000]}),
        client.post("/api/sessions/abc/ask", content=b"{not json", headers={"content-type": "application/json"}),
        client.post("/api/sessions/abc/ask", json={"nope": 1}),
        client.post(f"/api/profiles/{fitted}/inspect", data={"ask": "x"}),  # no file
        client.post(f"/api/profiles/{'n' * 3000}", data=CONFIG),
        client.post("/api/profiles/p", data={"config": "[" * 3000 + "]" * 3000}),
        client.post("/api/profiles/p", data={"config": json.dumps({"k" * 50_000: 1})}),
        client.post("/api/profiles/p", data={"expert": "E" * 50_000}),
        client.post(f"/api/profiles/{fitted}/inspect", files=uploads([pytest.importorskip("pathlib").Path(__file__)], "file"),
                    data={"ask": huge[:5000]}),
    ]
    for answer in answers:
        detail = one_line_4xx(answer, 422)
        assert "QQQQQQQQQQ" * 10 not in detail and "kkkkkkkkkk" * 10 not in detail and "EEEEEEEEEE" * 10 not in detail


def test_the_schema_documents_the_errors_the_app_returns(client):
    schema = client.get("/openapi.json").json()
    fit = schema["paths"]["/api/profiles/{name}"]["post"]["responses"]
    for code in ("400", "401", "403", "404", "413", "422", "429"):
        assert fit[code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut"), code
    for item in schema["paths"].values():
        for operation in item.values():
            if "422" in operation["responses"]:
                assert operation["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    assert schema["components"]["schemas"]["ErrorOut"]["properties"]["detail"]["type"] == "string"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"backbone": "resnet18", "weights": "/proc/self/environ"}, "config.backbone: not a setting clients may choose"),
        ({"weights": "/proc/self/environ"}, "config.weights: not a setting clients may choose"),
        ({"image_size": 2048}, "config.image_size: 2048 is outside 32 to 512"),
        ({"num_threads": 64}, "config.num_threads: not a setting"),
        ({"device": "cuda:7"}, "config.device: not a setting"),
        ({"batch_size": 1024}, "config.batch_size: not a setting"),
        ({"image_size": "64"}, "config.image_size: must be an integer"),
        ({"image_size": True}, "config.image_size: must be an integer"),
        ({"blur_sigma": float("nan")}, "config.blur_sigma: must be a number"),
        ({"clip_weights": "/etc/shadow"}, "config.clip_weights: not a setting"),
    ],
)
def test_clients_may_set_only_bounded_harmless_settings(client, samples, config, expected):
    response = client.post("/api/profiles/cfg", files=uploads(samples["normal"]), data={"config": json.dumps(config)})
    detail = one_line_4xx(response, 422)
    assert expected in detail and "environ" not in detail and "shadow" not in detail
    assert "cfg" not in [p["name"] for p in client.get("/api/profiles").json()]


def test_the_operator_sets_what_clients_may_not(samples, tmp_path):
    app = create_app(expert=SINGLE, lmm="none", ui=False, limits=LIMITS, expert_config={"patchcore": {"image_size": 96, "num_threads": 1}})
    with TestClient(app, base_url="http://localhost") as c:
        response = c.post("/api/profiles/op", files=uploads(samples["normal"]), data={"config": '{"progress": false}'})
        assert response.status_code == 201, response.text
        assert response.json()["config"] == {"progress": False}  # the client's own settings, as given
    detector = app.state.service.store.get_profile("op").inspector.detector
    assert detector.expert.config.image_size == 96 and detector.expert.config.num_threads == 1
