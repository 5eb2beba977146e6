"""Issue 29, replayed in process: memory per request and in total, quotas per token, per-route bodies, tokens, turns,
FIFOs in folders, and a transductive expert (MuSc) through the server. Each refusal is one JSON line naming its limit."""

from __future__ import annotations

import gc
import json
import os
import tempfile
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from .conftest import png_bytes, uploads
from .crafted import chunked_inspect_upload

from fastapi.testclient import TestClient  # noqa: E402

from myriad.serve.app import create_app  # noqa: E402
from myriad.serve.limits import Limits  # noqa: E402
from myriad.serve.security import AccessPolicy  # noqa: E402

psutil = pytest.importorskip("psutil")

#: The cheapest expert (the tutorial plugin), set by the operator since clients may not choose ``size``.
CHEAP = {"expert": "colour-stats", "expert_config": {"colour-stats": {"size": 32}}}
TOKEN_A, TOKEN_B = "token-of-alice-0123456789", "token-of-bob-0123456789ab"


def app_with(**kwargs):
    pytest.importorskip("myriad_experts_tutorial")
    return create_app(lmm="none", ui=False, **{**CHEAP, **kwargs})


def one_line(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and len(detail) < 700
    return detail


class PeakRss:
    """The process's resident memory sampled every 5 ms while the block runs: ``peak - start`` in bytes."""

    def __enter__(self) -> "PeakRss":
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()

    @property
    def grew(self) -> int:
        return self.peak - self.start


def alive_within_a_second(client) -> None:
    start = time.monotonic()
    assert client.get("/api/health").status_code == 200
    assert time.monotonic() - start < 1.0


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The temporary folder of this test alone (``tempfile.tempdir``), to check that nothing is left in it."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture(scope="module")
def flat_4096() -> bytes:
    """A flat 4096 x 4096 PNG: a few tens of KiB that decode to 48 MiB."""
    return png_bytes(np.full((4096, 4096, 3), 127, dtype=np.uint8))


# -- finding 1: a small request that decodes to gigabytes --------------------------------------------------------------
def test_a_small_fit_request_cannot_decode_gigabytes(flat_4096, private_tmp):
    """The issue's request: eight flat 4096 px PNGs (a few hundred KiB) used to add 3.2 GiB and hold the lock 20 s."""
    files = [("files", (f"flat{i}.png", flat_4096, "image/png")) for i in range(8)]
    assert sum(len(f[1][1]) for f in files) < 1024 * 1024
    with TestClient(app_with(), base_url="http://localhost") as c:
        with PeakRss() as rss:
            start = time.monotonic()
            response = c.post("/api/profiles/big", files=files)
            seconds = time.monotonic() - start
        detail = one_line(response, 413)
        assert "flat1.png" in detail and "--max-request-pixels" in detail and str(Limits().max_request_pixels) in detail
        assert rss.grew < 300 * 1024 * 1024, rss.grew  # one image decoded (48 MiB), never eight
        assert seconds < 10 and c.get("/api/profiles").json() == []
        alive_within_a_second(c)
    assert list(private_tmp.iterdir()) == []


def test_the_pixel_budget_counts_a_folder_too(tmp_path, samples):
    (tmp_path / "good").mkdir()
    for p in samples["normal"]:
        (tmp_path / "good" / p.name).write_bytes(p.read_bytes())
    limits = Limits(max_request_pixels=2 * 64 * 64)  # two of the three 64 px images
    with TestClient(app_with(limits=limits, data_root=tmp_path), base_url="http://localhost") as c:
        detail = one_line(c.post("/api/profiles/f", data={"folder": "good"}), 413)
    assert "good/normal2.png" in detail and "--max-request-pixels" in detail


# -- finding 1: memory counted in bytes, sessions that pin old models --------------------------------------------------
def test_sessions_do_not_keep_refit_profiles_alive_and_health_reports_bytes(samples):
    """fit -> inspect -> refit used to keep every old model alive through its sessions (152 MiB a cycle)."""
    app = app_with(max_profiles=1)
    service = app.state.service
    old = []
    with TestClient(app, base_url="http://localhost") as c:
        for cycle in range(4):
            assert c.post("/api/profiles/p", files=uploads(samples["normal"])).status_code == 201
            old.append(weakref.ref(service.store.get_profile("p").inspector))
            inspected = c.post("/api/profiles/p/inspect", files=uploads([samples["good"][0]], "file"))
            assert inspected.status_code == 200, inspected.text
        gc.collect()
        assert [ref() is None for ref in old] == [True, True, True, False]  # only the current model is alive
        health = c.get("/api/health").json()
        assert health["profiles"] == 1 and health["sessions"] == 4
        assert 0 < health["profile_bytes"] and 64 * 64 * 3 * 4 <= health["session_bytes"] <= health["max_memory_bytes"]
        session = inspected.json()["session_id"]
        assert c.delete("/api/profiles/p").status_code == 204
        gc.collect()
        assert old[-1]() is None  # deleted: freed, though its sessions remain
        answer = c.post(f"/api/sessions/{session}/ask", json={"question": "Where is the defect?"})
        assert answer.status_code == 200 and answer.json()["answer"]  # follow-ups need no fitted model


def test_sessions_are_dropped_by_bytes_and_never_past_the_budget(samples):
    image = png_bytes(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    budget = 3 * 1024 * 1024  # a 256 px session holds about 0.6 MiB (image, map, overlay PNG): four fit
    app = app_with(max_memory_bytes=budget)
    ids = []
    with TestClient(app, base_url="http://localhost") as c:
        assert c.post("/api/profiles/p", files=uploads(samples["normal"])).status_code == 201
        for i in range(8):
            response = c.post("/api/profiles/p/inspect", files=[("file", (f"i{i}.png", image, "image/png"))])
            assert response.status_code == 200, response.text
            ids.append(response.json()["session_id"])
            health = c.get("/api/health").json()
            assert health["profile_bytes"] + health["session_bytes"] <= budget
        assert 1 <= health["sessions"] < 8
        assert c.get(f"/api/sessions/{ids[0]}").status_code == 404 and c.get(f"/api/sessions/{ids[-1]}").status_code == 200


def test_one_token_cannot_hold_more_than_its_share_of_memory(samples):
    image = png_bytes(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    policy = AccessPolicy(tokens=(TOKEN_A, TOKEN_B))
    app = app_with(policy=policy, max_memory_bytes=8 * 1024 * 1024)  # a share of 2 MiB per token
    a, b = {"Authorization": f"Bearer {TOKEN_A}"}, {"Authorization": f"Bearer {TOKEN_B}"}
    with TestClient(app, base_url="http://localhost") as c:
        for headers in (a, b):
            assert c.post("/api/profiles/p", files=uploads(samples["normal"]), headers=headers).status_code == 201
        for _ in range(6):  # alice inspects more than her share holds
            assert c.post("/api/profiles/p/inspect", files=[("file", ("x.png", image, "image/png"))], headers=a).status_code == 200
        store = app.state.service.store
        alice = sum(s.nbytes for s in store.list_sessions() if s.owner.startswith("t0/"))
        assert 0 < alice <= store.per_client_bytes == 2 * 1024 * 1024
        assert c.post("/api/profiles/p/inspect", files=[("file", ("x.png", image, "image/png"))], headers=b).status_code == 200


# -- finding 2: quotas dodged by renaming the client --------------------------------------------------------------------
def test_quotas_count_by_token_not_by_client_id(samples):
    """One token fitting under X-Myriad-Client c1..c4 (--max-profiles 4) used to make every other token's fit 429."""
    app = app_with(policy=AccessPolicy(tokens=(TOKEN_A, TOKEN_B)), max_profiles=4)
    a, b = {"Authorization": f"Bearer {TOKEN_A}"}, {"Authorization": f"Bearer {TOKEN_B}"}
    with TestClient(app, base_url="http://localhost") as c:
        for i in range(1, 5):
            fitted = c.post("/api/profiles/p", files=uploads(samples["normal"]), headers={**a, "X-Myriad-Client": f"c{i}"})
            assert fitted.status_code == 201, fitted.text
        other = c.post("/api/profiles/p", files=uploads(samples["normal"]), headers=b)
        assert other.status_code == 201, other.text
        # alice's quota (a quarter of 4) is hers, whatever client ids she names: only her last profile is kept
        kept = [i for i in range(1, 5) if c.get("/api/profiles/p", headers={**a, "X-Myriad-Client": f"c{i}"}).status_code == 200]
        assert kept == [4]
        assert c.get("/api/profiles/p", headers=b).status_code == 200


# -- finding 4: a one-image route spooled up to the fit route's limit -----------------------------------------------------
def test_a_chunked_inspect_upload_is_cut_at_one_images_limit(private_tmp):
    """--max-upload-mb 1: a chunked inspect upload used to be spooled to 64 MiB before the refusal."""
    limits = Limits(max_upload_bytes=1024 * 1024)
    app = app_with(limits=limits)
    pulled, status, detail = chunked_inspect_upload(app, total_chunks=1024)  # 64 MiB offered
    assert status == 413
    assert "over the limit of 1.1 MiB for this route (one image: --max-upload-mb" in detail
    assert (pulled - 1) * 65536 <= limits.max_one_image_request_bytes + 65536 < limits.max_request_bytes // 32
    assert list(private_tmp.iterdir()) == []
    with TestClient(app, base_url="http://localhost") as c:
        declared = c.post("/api/profiles/parts/inspect", content=b"x",
                          headers={"content-length": str(limits.max_one_image_request_bytes + 1)})
        assert "for this route" in one_line(declared, 413)
        alive_within_a_second(c)


# -- finding 5: tokens, turns, FIFOs, hosts, paths, /redoc ----------------------------------------------------------------
def test_tokens_are_taken_whole_and_short_ones_refused(tmp_path, capsys, monkeypatch):
    from myriad.commands.serve import _read_tokens
    from myriad.testing import run_cli

    phrase = "correct horse battery staple"
    assert _read_tokens((phrase,), None) == (phrase,)
    listed = tmp_path / "tokens.txt"
    listed.write_text(f"{phrase}\n\n  second token with spaces  \n")
    assert _read_tokens((), listed) == (phrase, "second token with spaces")
    monkeypatch.setenv("MYRIAD_SERVE_TOKEN", phrase)
    assert _read_tokens((), None) == (phrase,)
    app = create_app(lmm="none", ui=False, policy=AccessPolicy(tokens=(phrase,)))
    with TestClient(app, base_url="http://localhost") as c:
        assert c.get("/api/profiles", headers={"Authorization": "Bearer horse"}).status_code == 401
        assert c.get("/api/profiles", headers={"Authorization": f"Bearer {phrase}"}).status_code == 200
    monkeypatch.delenv("MYRIAD_SERVE_TOKEN")
    code, _, err = run_cli(["serve", "--lmm", "none", "--no-ui", "--token", "short"], capsys)
    assert code == 1 and "token 1 has 5 characters; a token needs at least 16" in err and "short" not in err.replace("5 characters", "")
    assert len(err.strip().splitlines()) == 1


def test_the_turn_limit_holds_under_concurrent_asks():
    """Six concurrent follow-ups with --max-turns 2 used to be all stored: the count was checked outside the lock."""
    from myriad.serve.profiles import Session
    from myriad.serve.service import InspectionService

    class SlowFollowUps:
        model = None
        answers = "facts"

        def follow_up(self, result, question, conversation):
            time.sleep(0.05)
            return f"answer to {question}", conversation

    service = InspectionService(None, limits=Limits(max_turns=2))
    session = Session(id="s", profile="p", result=None, overlay_png=b"", follow=SlowFollowUps(), owner="me")
    service.store.add_session(session)

    def ask(i: int) -> str:
        try:
            return service.ask("s", f"question {i}?", owner="me")
        except Exception as exc:  # noqa: BLE001 - the refusal is the point
            return str(exc)

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(ask, range(6)))
    assert len(session.turns) == 2
    assert sum("--max-turns" in a for a in answers) == 4


def test_a_fifo_swapped_into_a_folder_does_not_hang_a_thread(tmp_path, samples, monkeypatch):
    """A regular file swapped for a FIFO after the folder was listed used to hang the worker thread for good."""
    import myriad.images

    (tmp_path / "good").mkdir()
    for p in samples["normal"]:
        (tmp_path / "good" / p.name).write_bytes(p.read_bytes())
    listed = myriad.images.list_images

    def list_then_swap(folder):
        files = listed(folder)
        files[-1].unlink()
        os.mkfifo(files[-1])  # no writer: a blocking open would wait for ever
        return files

    monkeypatch.setattr(myriad.images, "list_images", list_then_swap)
    app = app_with(data_root=tmp_path)
    with TestClient(app, base_url="http://localhost") as c:
        result = {}
        worker = threading.Thread(target=lambda: result.update(r=c.post("/api/profiles/f", data={"folder": "good"})),
                                  daemon=True)
        worker.start()
        worker.join(timeout=20)
        assert not worker.is_alive(), "the folder fit hangs on a FIFO"
        assert "good/normal2.png: not a regular file" in one_line(result["r"], 422)
        alive_within_a_second(c)


def test_any_host_needs_a_token(capsys, monkeypatch):
    from myriad.testing import run_cli

    monkeypatch.delenv("MYRIAD_SERVE_TOKEN", raising=False)
    code, _, err = run_cli(["serve", "--lmm", "none", "--no-ui", "--allowed-host", "*"], capsys)
    assert code == 1 and "--allowed-host '*'" in err and "DNS rebinding" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="DNS rebinding"):
        AccessPolicy(allowed_hosts=("*",))
    assert AccessPolicy(tokens=(TOKEN_A,), allowed_hosts=("*",)).host_allowed("anything.example")


def test_health_names_no_server_path_and_redoc_is_off(monkeypatch):
    import myriad.inspection as inspection

    secret = "/srv/secret-folder/trained.safetensors"
    monkeypatch.setattr(inspection, "load_lmm", lambda lmm, device, precision: object())
    with TestClient(create_app(lmm=secret, ui=False), base_url="http://localhost") as c:
        health = c.get("/api/health")
        assert health.status_code == 200 and health.json()["lmm"] == "weights file"
        assert "secret-folder" not in health.text and "safetensors" not in health.text
        assert c.get("/redoc").status_code == 404 and c.get("/docs").status_code == 200


# -- finding 6: a transductive expert through the server ---------------------------------------------------------------
def test_a_musc_profile_inspects_one_image_beside_its_control_normals(samples):
    """A musc profile used to fit, then answer every inspect with 422 (MuSc needs two images per batch)."""
    from myriad.plugins import list_experts

    if "musc" not in [e.name for e in list_experts()]:
        pytest.skip("the musc plugin is not installed")
    app = create_app(lmm="none", ui=False, expert="musc")
    with TestClient(app, base_url="http://localhost") as c:
        config = {"config": json.dumps({"image_size": 64})}
        fitted = c.post("/api/profiles/m", files=uploads(samples["normal"]), data=config)
        assert fitted.status_code == 201, fitted.text
        inspected = c.post("/api/profiles/m/inspect", files=uploads([samples["defect"][0]], "file"))
        assert inspected.status_code == 200, inspected.text
        assert inspected.json()["expert"] == "musc" and 0.0 <= inspected.json()["score"] <= 1.0
        one = c.post("/api/profiles/one", files=uploads(samples["normal"][:1]), data=config)
        assert "at least 2" in one_line(one, 422)  # refused when fitted, with the reason
