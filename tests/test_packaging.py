"""Installing one plugin folder adds exactly its experts, and its core dependency is ours (no network).

The core's distribution name is ``myriad-iad``: ``myriad`` on PyPI is an unrelated project.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CORE = "myriad-iad"  # the core's distribution name (import name and CLI: myriad)
PLUGIN_FOLDERS = sorted(
    [p.name for p in ROOT.glob("myriad_experts_*") if (p / "pyproject.toml").exists()] + ["docs/tutorial_plugin"]
)

#: installed alone in a clean venv: the tutorial authors copy and the default expert (the metadata test covers all)
CLEAN_VENV_FOLDERS = ["docs/tutorial_plugin", "myriad_experts_patchcore"]


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement string."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return canonicalize_name(Requirement(requirement).name)


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
    eps = project["entry-points"]["myriad"]
    assert all(target.startswith(folder) for target in eps.values())


@pytest.mark.parametrize("folder", PLUGIN_FOLDERS)
def test_every_plugin_requires_the_core_by_its_distribution_name(folder):
    import tomllib

    project = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]
    names = [requirement_name(dep) for dep in project["dependencies"]]
    assert CORE in names and "myriad" not in names, f"{folder}/pyproject.toml must require {CORE!r}, not 'myriad'"


def test_core_distribution_is_named_myriad_iad():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == CORE
    assert project["scripts"]["myriad"] == "myriad.cli:main"


def _pip_env() -> dict[str, str]:
    """This environment without the user's pip configuration (extra indexes, find-links, constraints)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _copy_tree(source: Path, target: Path) -> Path:
    """A build copy of ``source`` without caches, build outputs or the (large) shipped weights."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "*.safetensors", "tests")
    shutil.copytree(source, target, ignore=skip)
    return target


def _wheel(source: Path, wheel_dir: Path) -> Path:
    before = set(wheel_dir.glob("*.whl"))
    subprocess.run([PY, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w",
                    str(wheel_dir), str(source)], check=True, capture_output=True, text=True, env=_pip_env())
    (built,) = set(wheel_dir.glob("*.whl")) - before
    return built


def _decoy_core(tmp: Path) -> Path:
    """A stand-in for PyPI's unrelated ``myriad`` 0.1.4: a distribution ``myriad`` with a package ``myriad``."""
    (tmp / "myriad").mkdir(parents=True)
    (tmp / "myriad" / "__init__.py").write_text("DECOY = True\n")
    (tmp / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "myriad"\nversion = "0.1.4"\n[tool.setuptools]\npackages = ["myriad"]\n'
    )
    return tmp


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """A package index folder holding our core's wheel, the decoy ``myriad`` and the plugins' wheels."""
    tmp = tmp_path_factory.mktemp("wheelhouse")
    wheels = tmp / "wheels"
    wheels.mkdir()
    core = tmp / "core"
    core.mkdir()
    shutil.copy(ROOT / "pyproject.toml", core)
    shutil.copy(ROOT / "README.md", core)
    _copy_tree(ROOT / "myriad", core / "myriad")
    _wheel(core, wheels)
    _wheel(_decoy_core(tmp / "decoy"), wheels)
    for folder in CLEAN_VENV_FOLDERS:
        _wheel(_copy_tree(ROOT / folder, tmp / "plugins" / Path(folder).name), wheels)
    return wheels


@pytest.fixture(scope="module")
def installed_dependencies(tmp_path_factory) -> Path:
    """This environment's third-party packages (torch, timm, ...) without any Myriad distribution or pip.

    A clean venv sees them through a ``.pth`` line, so pip resolves every dependency of a plugin except
    the core, which must come from the wheelhouse: no network, no torch download.
    """
    import sysconfig

    folder = tmp_path_factory.mktemp("site")
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.lower()
        if "myriad" in name or name.startswith(("__editable__", "pip", "_distutils_hack")) or name.endswith(".pth"):
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("folder", CLEAN_VENV_FOLDERS)
def test_a_plugin_installed_alone_in_a_clean_venv_resolves_to_our_core(folder, tmp_path, wheelhouse, installed_dependencies):
    """``pip install <plugin>`` with an index holding both our core and a decoy ``myriad`` (as PyPI does)
    installs ``myriad-iad``, never the decoy, and the plugin's experts load from the core installed there."""
    import tomllib

    venv = tmp_path / "venv"
    subprocess.run([PY, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "deps.pth").write_text(f"{installed_dependencies}\n")
    project = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]
    dist = project["name"]
    (plugin_wheel,) = wheelhouse.glob(f"{dist.replace('-', '_')}-*.whl")
    install = subprocess.run(
        [PY, "-m", "pip", "--python", str(python), "install", "--no-index", "--find-links", str(wheelhouse),
         "--no-build-isolation", str(plugin_wheel)],
        capture_output=True, text=True, env=_pip_env(),
    )
    assert install.returncode == 0, install.stderr[-2000:]
    assert f"{CORE}-0.1.0" in install.stdout and "myriad-0.1.4" not in install.stdout, install.stdout[-2000:]
    probe = (
        "import json, importlib.metadata as md, myriad, myriad.hookspecs;"
        f"print(json.dumps([myriad.__file__, md.version('{CORE}'), md.requires('{dist}')]))"
    )
    # run from tmp_path: from the repository root, `import myriad` would find the checkout instead
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path)
    core_file, version, requires = json.loads(found.stdout)
    assert Path(core_file).is_relative_to(venv) and version == "0.1.0"
    assert any(requirement_name(r) == CORE for r in requires)
    listed = subprocess.run([str(python), "-m", "myriad", "experts", "--json"], capture_output=True, text=True,
                            env={**os.environ, "MYRIAD_LOAD_PLUGINS": dist}, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    experts = json.loads(listed.stdout)
    assert experts and {e["distribution"] for e in experts} == {dist}
