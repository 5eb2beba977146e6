"""``myriad serve`` on the command line: start-up errors, and a real uvicorn server answering."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

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
    import myriad.inspection as inspection

    monkeypatch.setattr(inspection, "SHIPPED_MINI_WEIGHTS", tmp_path / "myriad-mini.safetensors")
    code, _, err = run_cli(["serve", "--no-ui"], capsys)
    assert code == 1 and "myriad-mini.safetensors" in err and "mini" in err and "--lmm none" in err


def test_unknown_default_expert(capsys):
    code, _, err = run_cli(["serve", "--expert", "nope", "--lmm", "none"], capsys)
    assert code == 1 and "unknown expert 'nope'" in err and "patchcore" in err


def test_serve_runs_uvicorn_and_answers_health():
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "myriad", "serve", "--lmm", "none", "--no-ui", "--port", str(port), "--log-level", "warning"],
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
        assert health["status"] == "ok" and health["lmm"] == "none"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
