"""Profiles that outlive the process: preloaded with ``--profile NAME=PROFILE``, kept with ``--state-dir``; folders uncapped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import FAST_PATCHCORE, SINGLE, uploads

from fastapi.testclient import TestClient  # noqa: E402

from myriad.serve.app import create_app  # noqa: E402
from myriad.serve.limits import Limits  # noqa: E402

CONFIG = {"config": json.dumps(FAST_PATCHCORE)}
ALICE, BOB = {"X-Myriad-Client": "alice"}, {"X-Myriad-Client": "bob"}


@pytest.fixture(scope="module")
def fitted_profile(tmp_path_factory, samples) -> Path:
    """A profile folder as `myriad fit` writes it (PatchCore at 64 px on the three normal samples)."""
    from myriad.inspection import Inspector
    from myriad.profiles import save_profile

    inspector = Inspector(SINGLE, FAST_PATCHCORE, lmm="none").fit([str(p) for p in samples["normal"]])
    return save_profile(inspector, tmp_path_factory.mktemp("profiles") / "line1", len(samples["normal"]))


def _inspect(client, name, path, headers):
    return client.post(f"/api/profiles/{name}/inspect", files=uploads([path], "file"), headers=headers)


def test_a_preloaded_profile_is_shared_read_only_and_decides_as_fitted(fitted_profile, samples):
    from myriad.inspection import Inspector

    direct = Inspector(SINGLE, FAST_PATCHCORE, lmm="none").fit([str(p) for p in samples["normal"]])
    expected = direct.inspect([str(samples["defect"][0])])[0]
    app = create_app(expert=SINGLE, lmm="none", ui=False, profiles={"line1": fitted_profile})
    with TestClient(app, base_url="http://localhost") as c:
        for who in (ALICE, BOB):
            listed = c.get("/api/profiles", headers=who).json()
            assert [(p["name"], p["preloaded"], p["num_normal"]) for p in listed] == [("line1", True, 3)]
            response = _inspect(c, "line1", samples["defect"][0], who)
            assert response.status_code == 200, response.text
            assert response.json()["score"] == pytest.approx(expected.score, abs=1e-6)
            assert response.json()["decision"] == expected.decision
        response = c.delete("/api/profiles/line1", headers=ALICE)
        assert response.status_code == 409 and "preloaded" in response.json()["detail"]
        response = c.post("/api/profiles/line1", files=uploads(samples["normal"]), data=CONFIG, headers=ALICE)
        assert response.status_code == 409 and "preloaded" in response.json()["detail"]
        assert c.get("/api/profiles/line1", headers=BOB).status_code == 200


def test_a_profile_that_does_not_load_stops_the_start_naming_it(tmp_path):
    from myriad.profiles import ProfileError

    with pytest.raises(ProfileError, match="no such profile folder"):
        create_app(expert=SINGLE, lmm="none", ui=False, profiles={"line1": tmp_path / "missing"})


def test_state_dir_keeps_fitted_profiles_across_restarts(samples, tmp_path):
    state = tmp_path / "state"
    first = create_app(expert=SINGLE, lmm="none", ui=False, state_dir=state)
    with TestClient(first, base_url="http://localhost") as c:
        assert c.post("/api/profiles/parts", files=uploads(samples["normal"]), data=CONFIG, headers=ALICE).status_code == 201
        before = _inspect(c, "parts", samples["defect"][0], ALICE).json()
    saved = [p for p in state.rglob("profile.json")]
    assert len(saved) == 1 and saved[0].parent.name == "parts"

    second = create_app(expert=SINGLE, lmm="none", ui=False, state_dir=state)  # a restart
    with TestClient(second, base_url="http://localhost") as c:
        assert c.get("/api/profiles/parts", headers=BOB).status_code == 404  # still Alice's only
        after = _inspect(c, "parts", samples["defect"][0], ALICE)
        assert after.status_code == 200, after.text
        assert after.json()["score"] == pytest.approx(before["score"], abs=1e-6)
        assert c.delete("/api/profiles/parts", headers=ALICE).status_code == 204
    assert not list(state.rglob("profile.json"))
    third = create_app(expert=SINGLE, lmm="none", ui=False, state_dir=state)
    with TestClient(third, base_url="http://localhost") as c:
        assert c.get("/api/profiles", headers=ALICE).json() == []


def test_a_damaged_saved_profile_is_skipped_and_logged_not_fatal(samples, tmp_path, caplog):
    state = tmp_path / "state"
    with TestClient(create_app(expert=SINGLE, lmm="none", ui=False, state_dir=state), base_url="http://localhost") as c:
        assert c.post("/api/profiles/parts", files=uploads(samples["normal"]), data=CONFIG, headers=ALICE).status_code == 201
    state_file = next(state.rglob("state.safetensors"))
    state_file.write_bytes(state_file.read_bytes()[:-1] + b"\0")
    with caplog.at_level("WARNING", logger="myriad.serve"):
        app = create_app(expert=SINGLE, lmm="none", ui=False, state_dir=state)
    assert "changed since the profile was written" in caplog.text
    with TestClient(app, base_url="http://localhost") as c:
        assert c.get("/api/profiles", headers=ALICE).json() == []


def test_a_folder_is_not_held_to_the_upload_cap(samples, tmp_path):
    root = tmp_path / "root"
    (root / "good").mkdir(parents=True)
    for p in samples["normal"]:
        (root / "good" / p.name).write_bytes(p.read_bytes())
    limits = Limits(max_files=2, max_folder_images=3)
    with TestClient(create_app(expert=SINGLE, lmm="none", ui=False, data_root=root, limits=limits), base_url="http://localhost") as c:
        response = c.post("/api/profiles/p", data={"folder": "good", **CONFIG})
        assert response.status_code == 201 and response.json()["num_normal"] == 3
        assert c.post("/api/profiles/q", files=uploads(samples["normal"]), data=CONFIG).status_code == 413
    with TestClient(create_app(expert=SINGLE, lmm="none", ui=False, data_root=root, limits=Limits(max_folder_images=2)),
                    base_url="http://localhost") as c:
        response = c.post("/api/profiles/p", data={"folder": "good", **CONFIG})
        assert response.status_code == 413 and "--max-folder-images" in response.json()["detail"]


def test_a_preloaded_profile_applies_its_acceptance_rules(samples, tmp_path):
    from myriad.acceptance import AcceptanceRules
    from myriad.inspection import Inspector
    from myriad.profiles import save_profile

    inspector = Inspector(SINGLE, FAST_PATCHCORE, lmm="none").fit([str(p) for p in samples["normal"]])
    inspector.set_rules(AcceptanceRules(ignore_boxes=[(0.0, 0.0, 1.0, 1.0)], review_band=0.5))
    saved = save_profile(inspector, tmp_path / "ruled", len(samples["normal"]))
    app = create_app(expert=SINGLE, lmm="none", ui=False, profiles={"ruled": saved})
    with TestClient(app, base_url="http://localhost") as c:
        results = [_inspect(c, "ruled", p, ALICE).json() for p in samples["defect"] + samples["good"]]
    for r in results:  # a located alarm in the ignored area is accepted; a texture-wide one is never ignored
        if r["decision_before_rules"] == "anomalous":
            assert (r["decision"], r["rule"][:6]) == (("anomalous", "") if r["findings"]["texture_wide"] else ("normal", "ignore"))
    normal = [r for r in results if r["decision_before_rules"] == "normal"]
    assert normal and all(r["decision"] == "review" and "review band" in r["rule"] for r in normal)
