"""Plugins keep to the declared plugin API: they import from the core only through ``myriad.api``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the importable package of every plugin in the repository (not their tests: those drive the host)
PLUGIN_PACKAGES = sorted(
    [p for p in ROOT.glob("myriad_experts_*/myriad_experts_*") if (p / "__init__.py").is_file()]
    + [ROOT / "docs" / "tutorial_plugin" / "myriad_experts_tutorial"]
)
PUBLIC = "myriad.api"


def _is_core(module: str) -> bool:
    return module == "myriad" or module.startswith("myriad.")


def core_imports_outside_the_api(source: str, where: str) -> list[str]:
    """``where:line: import`` for every import of a core module other than ``myriad.api`` in ``source``."""
    tree = ast.parse(source, filename=where)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _is_core(node.module):
            if node.module != PUBLIC:
                names = ", ".join(alias.name for alias in node.names)
                found.append(f"{where}:{node.lineno}: from {node.module} import {names}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _is_core(alias.name) and alias.name != PUBLIC:
                    found.append(f"{where}:{node.lineno}: import {alias.name}")
    return found


def test_the_plugins_of_the_repository_are_found():
    names = {p.name for p in PLUGIN_PACKAGES}
    assert {"myriad_experts_patchcore", "myriad_experts_tutorial"} <= names
    assert all(any(p.rglob("*.py")) for p in PLUGIN_PACKAGES)


@pytest.mark.parametrize("package", PLUGIN_PACKAGES, ids=lambda p: p.name)
def test_plugins_import_the_core_only_through_myriad_api(package):
    found = [
        line
        for path in sorted(package.rglob("*.py"))
        for line in core_imports_outside_the_api(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not found, "plugins may import from the core only through myriad.api:\n" + "\n".join(found)


def test_the_rule_catches_every_form_of_core_import():
    source = (
        "import myriad\nimport myriad.images as images\nfrom myriad import hookimpl\n"
        "from myriad.api import Expert\nimport myriad.api\nfrom myriad_experts_x import y\n"
        "def f():\n    from myriad.io import load_tensors\n"
    )
    found = core_imports_outside_the_api(source, "plugin.py")
    assert [line.split(": ", 1)[1] for line in found] == [
        "import myriad",
        "import myriad.images",
        "from myriad import hookimpl",
        "from myriad.io import load_tensors",
    ]
    assert [line.split(": ", 1)[0] for line in found] == ["plugin.py:1", "plugin.py:2", "plugin.py:3", "plugin.py:8"]


def test_every_public_name_resolves():
    import myriad.api

    assert len(set(myriad.api.__all__)) == len(myriad.api.__all__)
    missing = [name for name in myriad.api.__all__ if getattr(myriad.api, name, None) is None]
    assert not missing, f"names of myriad.api.__all__ that do not resolve: {missing}"
    assert myriad.api.hookimpl is __import__("myriad.hookspecs").hookspecs.hookimpl
    with pytest.raises(AttributeError, match="no attribute 'PluginManager'"):
        myriad.api.PluginManager  # noqa: B018


def test_every_name_the_plugins_import_is_public():
    import myriad.api

    imported = set()
    for package in PLUGIN_PACKAGES:
        for path in package.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == PUBLIC:
                    imported |= {alias.name for alias in node.names}
    assert imported and imported <= set(myriad.api.__all__)


def test_importing_the_plugin_api_loads_no_torch():
    code = (
        "import sys, myriad.api as api\n"
        "[getattr(api, name) for name in api.__all__]\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
