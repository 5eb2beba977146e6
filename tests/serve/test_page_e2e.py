"""End to end: uvicorn on loopback, the static page driven in headless Chromium (Selenium + Debian's chromedriver).

Skipped when Chromium, chromedriver or Selenium is missing, unless ``MYRIAD_REQUIRE_BROWSER=1``
(as in ``.ci/run``), where a missing browser fails the test instead.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from myriad.defaults import DEFAULT_EXPERT

from .conftest import FAST_FUSED

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("MYRIAD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MYRIAD_CHROMEDRIVER", "/usr/bin/chromedriver")
#: Without these, Chromium on a machine with no network hangs on start-up or on background fetches.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000",
)


def _require_browser() -> None:
    from importlib.util import find_spec

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    missing += [f"the {name} package" for name in ("selenium", "uvicorn") if find_spec(name) is None]
    if missing:
        message = f"browser test needs {', '.join(missing)} (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("MYRIAD_REQUIRE_BROWSER") == "1":
            pytest.fail(message + "; MYRIAD_REQUIRE_BROWSER=1 forbids skipping")
        pytest.skip(message)


@pytest.fixture(scope="module", autouse=True)
def _browser_available() -> None:
    """Skip (or fail, under MYRIAD_REQUIRE_BROWSER=1) before loading any model."""
    _require_browser()


@pytest.fixture(scope="module")
def server_url(mini_lmm):
    import uvicorn

    from myriad.serve.app import create_app

    app = create_app(model=mini_lmm, answers="lmm")  # the paper's route: the untrained LMM's text, withheld when junk
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="myriad-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_upload_inspect_see_overlay_and_answer_then_follow_up(server_url, browser, samples, tmp_path):
    try:
        _drive_the_page(server_url, browser, samples, tmp_path)
    except Exception:
        browser.save_screenshot(str(tmp_path / "failure.png"))
        print(f"screenshot of the failure: {tmp_path / 'failure.png'}")
        raise


def _drive_the_page(server_url, browser, samples, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, app = server_url
    quick = WebDriverWait(browser, 30, poll_frequency=0.2)  # page updates
    slow = WebDriverWait(browser, 180, poll_frequency=0.25)  # model calls on a busy CPU
    browser.get(f"{url}/ui/")
    quick.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#expert option[value="{DEFAULT_EXPERT}"]'))
    assert "Myriad LMM" in browser.find_element(By.ID, "lmm-note").text
    assert not browser.find_element(By.ID, "token").is_displayed()  # no --token: no token field
    assert browser.find_element(By.ID, "expert").get_attribute("value") == DEFAULT_EXPERT  # the fusion, preselected
    assert browser.find_elements(By.CSS_SELECTOR, "#expert option[value=patchcore]")  # single experts stay on offer

    # upload: three normal references, then the test image (shown at once, before any request)
    browser.find_element(By.CSS_SELECTOR, "#normal-files input[type=file]").send_keys(
        "\n".join(str(p) for p in samples["normal"])
    )
    quick.until(lambda d: all(p.name in d.find_element(By.ID, "normal-files").text for p in samples["normal"]))
    browser.find_element(By.CSS_SELECTOR, "#test-image input[type=file]").send_keys(str(samples["defect"][0]))
    quick.until(lambda d: d.find_element(By.ID, "test-preview").is_displayed())
    browser.find_element(By.CSS_SELECTOR, "details summary").click()  # the expert options, folded by default
    browser.find_element(By.ID, "expert-config").clear()
    browser.find_element(By.ID, "expert-config").send_keys(json.dumps(FAST_FUSED))  # settings per member

    # inspect: the overlay appears beside the image, with the verdict and Myriad's answer
    browser.find_element(By.ID, "inspect-button").click()
    overlay = slow.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, "#overlay img") if e.is_displayed()])[0]
    quick.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) == 64)
    slow.until(lambda d: "calibrated score" in d.find_element(By.ID, "answer").text)
    answer = browser.find_element(By.ID, "answer").text
    assert DEFAULT_EXPERT in answer and "From the expert's map: " in answer
    assert not browser.find_element(By.ID, "error").is_displayed()

    service = app.state.service
    (profile,) = service.store.list_profiles()
    assert profile.name == "page" and profile.owner.startswith("local/page-")  # the tab is its own client
    assert profile.expert == DEFAULT_EXPERT and profile.num_normal == 3 and profile.config == FAST_FUSED
    (session,) = service.store.list_sessions()
    # Myriad's answer is shown unless it fails the degeneracy check; then it is withheld and the map's answer stays
    if session.result.answer_problems:
        assert "Myriad's answer withheld" in answer
        assert len(session.result.answer.strip()) < 8 or session.result.answer.strip() not in answer
    else:
        assert "Myriad: " + session.result.answer.strip() in answer
    assert session.result.grounded_answer in answer

    # each member's calibrated score, under the overlay
    members = browser.find_element(By.ID, "member-scores")
    expected = " · ".join(f"{name} {m['score']:.2f}" for name, m in session.result.members.items())
    assert members.is_displayed() and members.text == expected and expected.startswith("patchcore ")
    # the findings measured on the map, in one line under the overlay
    findings = browser.find_element(By.ID, "findings")
    expected = "no defect found" if session.result.findings.verdict == "normal" else session.result.findings.region
    assert findings.is_displayed() and findings.text.startswith(expected)

    # a follow-up question in the chat
    question = "Where is the defect?"
    browser.find_element(By.ID, "follow-up").send_keys(question)
    browser.find_element(By.ID, "ask-button").click()
    slow.until(lambda d: len(session.turns) == 1 and question in d.find_element(By.ID, "chat").text)
    chat = browser.find_element(By.ID, "chat").text
    from myriad.answers_text import degeneracy_reasons

    reply = session.turns[0][1]
    if degeneracy_reasons(reply):
        assert "Myriad's answer withheld" in chat and (len(reply.strip()) < 8 or reply.strip() not in chat)
    else:
        assert reply in chat
    assert "From the expert's map: " + session.result.grounded_for(question) in chat

    # a second inspection with the same references does not refit
    browser.find_element(By.ID, "inspect-button").click()
    slow.until(lambda d: len(service.store.list_sessions()) == 2)
    assert service.store.list_profiles()[0] is profile

    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 600
