"""The CLI in subprocesses: plugin discovery, JSON listing, MYRIAD_LOAD_PLUGINS, startup time, no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

PY = sys.executable


def run(args, env=None, check=True):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([PY, "-m", "myriad", *args], capture_output=True, text=True, env=full_env, check=check)


def installed_distributions():
    from importlib.metadata import entry_points

    return {ep.dist.metadata["Name"] for ep in entry_points(group="myriad")}


def test_experts_json_lists_installed_experts_with_keys():
    data = json.loads(run(["experts", "--json"]).stdout)
    assert isinstance(data, list)
    for item in data:
        assert set(item) == {"name", "modes", "distribution", "version", "description"}
    assert {d["distribution"] for d in data} <= installed_distributions()


def test_load_plugins_empty_string_hides_all():
    assert json.loads(run(["experts", "--json"], env={"MYRIAD_LOAD_PLUGINS": ""}).stdout) == []


def test_load_plugins_restricts_to_named_distribution():
    dists = installed_distributions()
    if not dists:
        pytest.skip("no plugin installed")
    one = sorted(dists)[0]
    data = json.loads(run(["experts", "--json"], env={"MYRIAD_LOAD_PLUGINS": one}).stdout)
    assert data and {d["distribution"] for d in data} == {one}


def test_help_and_experts_do_not_import_torch_and_start_fast():
    code = (
        "import sys, time; t = time.perf_counter();"
        "from myriad.cli import main\n"
        "try:\n    main(['experts', '--json'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NOTORCH', time.perf_counter() - t, file=sys.stderr)"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    flag, seconds = out.stderr.strip().split()[-2:]
    assert flag == "NOTORCH"
    assert float(seconds) < 1.0
    start = time.perf_counter()
    run(["--help"])
    assert time.perf_counter() - start < 2.0  # includes interpreter start-up


def test_broken_plugin_is_reported_and_others_still_load(tmp_path):
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[myriad]\nbroken = broken_plugin_mod\n")
    (tmp_path / "broken_plugin_mod.py").write_text("raise RuntimeError('boom at import')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = run(["experts", "--json"], env=env)
    assert "broken-plugin" in result.stderr and "boom at import" in result.stderr
    assert json.loads(result.stdout) == json.loads(run(["experts", "--json"]).stdout)


def test_unknown_expert_error_is_one_line_and_nonzero():
    result = run(["eval", "--expert", "nope", "--data", "/nonexistent"], check=False)
    if "No such command" in result.stderr:
        pytest.skip("eval command not built yet")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


def test_check_backbone_reports_real_weights():
    result = run(["check-backbone"])
    assert "backbone OK" in result.stdout
