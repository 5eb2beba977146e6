"""``myriad serve`` on the command line: start-up errors, and a real uvicorn server answering."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from myriad.defaults import DEFAULT_EXPERT
from myriad.testing import run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_weights_is_a_clear_start_up_error(tmp_path, capsys):
    missing = tmp_path / "trained.safetensors"
    code, _, err = run_cli(["serve", "--lmm", str(missing), "--no-ui"], capsys)
    assert code == 1 and str(missing) in err and "--lmm none" in err and "Traceback" not in err


def test_missing_shipped_mini_weights(monkeypatch, tmp_path, capsys):
    import myriad.lmm_loading as lmm_loading

    monkeypatch.setattr(lmm_loading, "SHIPPED_MINI_WEIGHTS", tmp_path / "myriad-mini.safetensors")
    code, _, err = run_cli(["serve", "--no-ui"], capsys)
    assert code == 1 and "myriad-mini.safetensors" in err and "mini" in err and "--lmm none" in err


def test_unknown_default_expert(capsys):
    code, _, err = run_cli(["serve", "--expert", "nope", "--lmm", "none"], capsys)
    assert code == 1 and "unknown expert 'nope'" in err and "patchcore" in err


def test_a_fused_default_expert_names_its_missing_member(capsys):
    code, _, err = run_cli(["serve", "--expert", "patchcore+nope", "--lmm", "none", "--no-ui"], capsys)
    assert code == 1 and "unknown expert 'nope'" in err and "Traceback" not in err


def test_bad_false_alarm_rate_and_fused_operator_settings_are_start_up_errors(capsys):
    code, _, err = run_cli(["serve", "--false-alarm-rate", "2", "--lmm", "none", "--no-ui"], capsys)
    assert code == 2 and "--false-alarm-rate" in err and "Traceback" not in err
    flat = json.dumps({"patchcore+global": {"image_size": 64}})
    code, _, err = run_cli(["serve", "--expert-config", flat, "--lmm", "none", "--no-ui"], capsys)
    assert code == 2 and "--expert-config" in err and "per member" in err and "'image_size'" in err
    missing = json.dumps({"patchcore+nope": {}})
    code, _, err = run_cli(["serve", "--expert-config", missing, "--lmm", "none", "--no-ui"], capsys)
    assert code == 2 and "unknown expert 'nope'" in err


def test_off_loopback_without_a_token_refuses_to_start(capsys, monkeypatch):
    monkeypatch.delenv("MYRIAD_SERVE_TOKEN", raising=False)
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        code, _, err = run_cli(["serve", "--host", host, "--lmm", "none", "--no-ui"], capsys)
        assert code == 1 and f"--host {host} is reachable from the network: give a token" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_help_warns_about_exposing_the_server(capsys):
    code, out, _ = run_cli(["serve", "--help"], capsys)
    text = " ".join(out.split())
    assert code == 0 and "exposes the server to the network and needs --token" in text
    assert "MYRIAD_SERVE_TOKEN" in text and "--allowed-host" in text


def test_serve_runs_uvicorn_and_answers_health_with_a_token_from_the_environment():
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MYRIAD_SERVE_TOKEN": "let me in, 16+ chars"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "myriad", "serve", "--lmm", "none", "--no-ui", "--port", str(port), "--log-level", "warning",
         "--false-alarm-rate", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                    health = json.loads(response.read())
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"server did not start: {proc.communicate(timeout=5)[0]}")
                time.sleep(0.2)
        assert health["status"] == "ok" and health["lmm"] == "none" and health["token_required"] is True
        assert health["default_expert"] == DEFAULT_EXPERT and health["false_alarm_rate"] == 0.05
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/experts")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 401
        request.add_header("Authorization", "Bearer let me in, 16+ chars")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert any(e["name"] == "patchcore" for e in json.loads(response.read()))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
