"""The page's logic without a browser: per-session profiles refitted only when their inputs change, clear errors."""

from __future__ import annotations

import json

import pytest

from .conftest import FAST_PATCHCORE

from myriad.serve.errors import ServeError  # noqa: E402
from myriad.serve.page import ELEMENT_IDS, _inspect  # noqa: E402
from myriad.serve.service import InspectionService  # noqa: E402


@pytest.fixture
def service():
    return InspectionService(None, default_expert="patchcore")


def test_a_session_fits_once_and_refits_when_its_inputs_change(service, samples):
    normal = [str(p) for p in samples["normal"]]
    options = json.dumps(FAST_PATCHCORE)
    overlay, text, chat, state = _inspect(service, "patchcore", normal, options, "", str(samples["defect"][0]), None)
    assert overlay.size == (64, 64) and chat == []
    assert "ANOMALOUS" in text and "calibrated score" in text and "without the Myriad LMM" in text
    first = service.store.get_profile(state["profile"])
    assert state["profile"].startswith("ui-") and first.num_normal == 3

    _, _, _, state = _inspect(service, "patchcore", normal, options, "", str(samples["good"][0]), state)
    assert service.store.get_profile(state["profile"]) is first  # same inputs: no refit
    assert len(service.store.list_sessions()) == 2

    _, _, _, state = _inspect(service, "patchcore", normal[:2], options, "", str(samples["good"][0]), state)
    second = service.store.get_profile(state["profile"])
    assert second is not first and second.num_normal == 2
    assert len(service.store.list_profiles()) == 1  # one profile per browser session


def test_page_errors_are_clear(service, samples):
    normal = [str(p) for p in samples["normal"]]
    with pytest.raises(ServeError, match="upload a test image"):
        _inspect(service, "patchcore", normal, "{}", "", None, None)
    with pytest.raises(ServeError, match="not valid JSON"):
        _inspect(service, "patchcore", normal, "{oops", "", str(samples["good"][0]), None)
    with pytest.raises(ServeError, match="needs normal reference images"):
        _inspect(service, "patchcore", [], "{}", "", str(samples["good"][0]), None)


def test_the_page_builds_with_every_element_and_expert(service):
    pytest.importorskip("gradio")
    from myriad.serve.page import build_page

    page = build_page(service)
    ids = {block.elem_id for block in page.blocks.values()}
    assert set(ELEMENT_IDS) <= ids
    (dropdown,) = [b for b in page.blocks.values() if b.elem_id == "expert"]
    assert "patchcore" in [value for _, value in dropdown.choices] and dropdown.value == "patchcore"
