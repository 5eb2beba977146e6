"""Profiles and sessions belong to their client; quotas keep one client from pushing out another; work per request is bounded."""

from __future__ import annotations

import json
import time

import pytest

from .conftest import FAST_PATCHCORE, SINGLE, uploads

from fastapi.testclient import TestClient  # noqa: E402

from myriad.serve.app import create_app  # noqa: E402
from myriad.serve.errors import BusyError, ConflictError, NotFoundError, ServeError  # noqa: E402
from myriad.serve.limits import Limits  # noqa: E402
from myriad.serve.profiles import Profile, ProfileStore, Session  # noqa: E402

CONFIG = {"config": json.dumps(FAST_PATCHCORE)}


def profile(name: str, owner: str) -> Profile:
    return Profile(name, "patchcore", {}, "few_shot", 1, inspector=None, owner=owner)


def test_clients_see_and_touch_only_their_own(samples):
    app = create_app(expert=SINGLE, lmm="none", ui=False)
    alice, bob = {"X-Myriad-Client": "alice"}, {"X-Myriad-Client": "bob"}
    with TestClient(app, base_url="http://localhost") as c:
        assert c.post("/api/profiles/parts", files=uploads(samples["normal"]), data=CONFIG, headers=alice).status_code == 201
        session = c.post("/api/profiles/parts/inspect", files=uploads([samples["good"][0]], "file"), headers=alice).json()
        sid = session["session_id"]
        assert c.get("/api/profiles", headers=bob).json() == []
        assert c.get("/api/profiles/parts", headers=bob).status_code == 404
        assert c.post("/api/profiles/parts/inspect", files=uploads([samples["good"][0]], "file"), headers=bob).status_code == 404
        assert c.delete("/api/profiles/parts", headers=bob).status_code == 404
        for path in (f"/api/sessions/{sid}", session["overlay_url"]):
            assert c.get(path, headers=bob).status_code == 404
            assert c.get(path, headers=alice).status_code == 200
        assert c.delete(f"/api/sessions/{sid}", headers=bob).status_code == 404
        # bob's profile of the same name is his own; alice's is untouched
        assert c.post("/api/profiles/parts", files=uploads(samples["normal"][:2]), data=CONFIG, headers=bob).status_code == 201
        assert c.get("/api/profiles/parts", headers=alice).json()["num_normal"] == 3
        assert c.get("/api/profiles/parts", headers=bob).json()["num_normal"] == 2
        assert c.get("/api/health").json()["profiles"] == 2
        bad = c.get("/api/profiles", headers={"X-Myriad-Client": "../../x"})
        assert bad.status_code == 400 and "x-myriad-client" in bad.json()["detail"]


def test_one_client_cannot_evict_another():
    store = ProfileStore(max_profiles=4, max_sessions=4, per_client_profiles=2, idle_s=3600)
    store.put_profile(profile("a1", "alice"))
    store.put_profile(profile("a2", "alice"))
    for i in range(5):  # bob churns: only his own are dropped
        store.put_profile(profile(f"b{i}", "bob"))
    assert [p.name for p in store.list_profiles("alice")] == ["a1", "a2"]
    assert [p.name for p in store.list_profiles("bob")] == ["b3", "b4"]
    with pytest.raises(BusyError, match="maximum of 4 profiles"):
        store.check_room("carol", "c1")  # full of others' recent profiles: refused, nobody dropped
    with pytest.raises(BusyError):
        store.put_profile(profile("c1", "carol"))
    assert store.counts()["profiles"] == 4
    store.put_profile(profile("a1", "alice"))  # refitting one's own is always possible
    idle = ProfileStore(max_profiles=2, max_sessions=2, per_client_profiles=2, idle_s=0.01)
    idle.put_profile(profile("a1", "alice"))
    idle.put_profile(profile("a2", "alice"))
    time.sleep(0.05)
    idle.put_profile(profile("c1", "carol"))  # alice's idle ones may go now
    assert [p.name for p in idle.list_profiles()] == ["a2", "c1"]


def test_sessions_have_per_client_quotas():
    store = ProfileStore(max_profiles=4, max_sessions=6, per_client_sessions=2, idle_s=3600)
    ids = {}
    for owner in ("alice", "bob"):
        for i in range(4):
            session = Session(id=f"{owner}{i}", profile="p", result=None, overlay_png=b"", follow=None, owner=owner)
            store.add_session(session)
            ids.setdefault(owner, []).append(session.id)
    assert [s.id for s in store.list_sessions("alice")] == ["alice2", "alice3"]
    assert [s.id for s in store.list_sessions("bob")] == ["bob2", "bob3"]
    with pytest.raises(NotFoundError):
        store.get_session("alice3", "bob")


class _FakeModel:
    def __init__(self):
        self.calls = []
        self.config = type("C", (), {"max_new_tokens": 90})()

    def generate(self, *args, **kwargs):
        self.calls.append(kwargs)
        return ["Yes."]

    def chat(self, conversation, question=None, **kwargs):
        self.calls.append(kwargs)
        return "A scratch."


def test_answers_are_bounded_in_tokens_and_seconds(monkeypatch):
    """The deadline is the behaviour under test: a fake monotonic clock moves past it, no sleeping."""
    from myriad.serve import bounds
    from myriad.serve.bounds import BoundedModel

    clock = [1000.0]
    monkeypatch.setattr(bounds.time, "monotonic", lambda: clock[0])
    fake = _FakeModel()
    bounded = BoundedModel(fake, max_new_tokens=16, max_seconds=0.05)
    assert bounded.config is fake.config  # everything else is the model's own
    bounded.generate("pixels", "maps", None)
    bounded.chat("conversation", "why?", max_new_tokens=4)
    assert [c["max_new_tokens"] for c in fake.calls] == [16, 4]
    stop = fake.calls[0]["stop_fn"]
    assert stop("partial answer") is False
    clock[0] += 0.05
    assert stop("partial answer") is False  # exactly at the deadline: still running
    clock[0] += 0.001
    assert stop("partial answer") is True


def test_questions_and_turns_are_bounded():
    from myriad.serve.service import InspectionService

    class Inspector:
        model = object()
        answers = "lmm"

        def follow_up(self, result, question, conversation):
            return f"answer to {question}", conversation

    service = InspectionService(_FakeModel(), limits=Limits(max_question_chars=20, max_turns=2))
    session = Session(id="s", profile="p", result=None, overlay_png=b"", follow=Inspector(), owner="me")
    service.store.add_session(session)
    with pytest.raises(ServeError, match="question: 21 characters; the limit is 20"):
        service.ask("s", "q" * 21, owner="me")
    with pytest.raises(ServeError, match="ask: 25 characters"):
        service.check_question("a" * 25, "ask")
    assert service.ask("s", "one?", owner="me") == "answer to one?"
    assert service.ask("s", "two?", owner="me") == "answer to two?"
    with pytest.raises(ConflictError, match="its 2 follow-up questions"):
        service.ask("s", "three?", owner="me")
    with pytest.raises(NotFoundError):
        service.ask("s", "one?", owner="someone else")
