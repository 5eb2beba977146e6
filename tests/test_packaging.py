"""Installing one plugin folder adds exactly its experts (pip install --target, no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def experts(env):
    out = subprocess.run([PY, "-m", "myriad", "experts", "--json"], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return {d["name"]: d for d in json.loads(out.stdout)}


@pytest.mark.slow
def test_installing_the_tutorial_plugin_adds_exactly_its_expert(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [PY, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(ROOT / "docs" / "tutorial_plugin")],
        check=True, capture_output=True,
    )
    env = {"PYTHONPATH": str(target), "MYRIAD_LOAD_PLUGINS": "myriad-experts-tutorial"}
    found = experts(env)
    assert list(found) == ["colour-stats"]
    assert found["colour-stats"]["distribution"] == "myriad-experts-tutorial"
    assert experts({"PYTHONPATH": str(target), "MYRIAD_LOAD_PLUGINS": ""}) == {}


@pytest.mark.parametrize("folder", sorted(p.name for p in ROOT.glob("myriad_experts_*") if (p / "pyproject.toml").exists()))
def test_each_plugin_folder_declares_only_its_own_entry_points(folder):
    import tomllib

    meta = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["name"] == folder.replace("_", "-")
    assert any(dep.split("=")[0].split(">")[0].strip() == "myriad" for dep in project["dependencies"])
    eps = project["entry-points"]["myriad"]
    assert all(target.startswith(folder) for target in eps.values())
