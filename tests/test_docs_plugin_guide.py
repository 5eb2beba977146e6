"""The plugin author's guide (docs/writing-plugins.md) matches the tutorial plugin and the host, and every plugin
folder follows the template the guide writes down."""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-plugins.md"
TUTORIAL = ROOT / "docs" / "tutorial_plugin"
PLUGIN_FOLDERS = sorted(p for p in ROOT.glob("myriad_experts_*") if (p / "pyproject.toml").is_file()) + [TUTORIAL]


def guide_section(title: str) -> str:
    """The text of the guide's ``## title`` section (up to the next ``## `` heading)."""
    text = GUIDE.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def code_blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of ``text`` in ``language`` (``""`` for blocks without one)."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def tree_paths(block: str) -> list[str]:
    """The paths of an indented folder tree (two spaces a level, ``# comments`` dropped), folders ending in ``/``."""
    paths, stack = [], []
    for line in block.splitlines():
        entry = line.split("#", 1)[0].rstrip()
        if not entry.strip():
            continue
        depth = (len(entry) - len(entry.lstrip())) // 2
        stack[depth:] = [entry.strip()]
        paths.append("".join(stack))
    return paths


def plugin_name(folder: Path) -> str:
    """``myriad_experts_<name>`` -> ``name``; the tutorial's package is ``myriad_experts_tutorial``."""
    return "tutorial" if folder == TUTORIAL else folder.name.removeprefix("myriad_experts_")


def test_the_layout_is_the_tutorial_plugins_folder() -> None:
    """Every folder and file of the guide's tree exists in docs/tutorial_plugin, its test file included."""
    trees = code_blocks(guide_section("1. Lay out the distribution"), "")
    assert trees, "the guide's section 1 has no folder tree"
    paths = tree_paths(trees[0])
    assert paths[0] == "docs/tutorial_plugin/"
    assert "docs/tutorial_plugin/tests/test_tutorial_contract.py" in paths
    for path in paths:
        assert (ROOT / path).exists(), f"docs/writing-plugins.md shows {path}, which does not exist"


def test_the_pyproject_snippet_is_the_tutorials_file_with_a_build_system() -> None:
    """The guide's pyproject.toml is the tutorial's (same tables and values), [build-system] included."""
    import tomllib

    snippets = code_blocks(guide_section("1. Lay out the distribution"), "toml")
    assert len(snippets) == 1
    shown = tomllib.loads(snippets[0])
    assert shown == tomllib.loads((TUTORIAL / "pyproject.toml").read_text())
    assert shown["build-system"]["build-backend"] == "setuptools.build_meta"


def test_the_constructor_shown_is_the_one_the_host_calls(myriad_plugin) -> None:
    """The guide's constructor is the tutorial's; the host calls ``factory(config)`` with the one validated config."""
    from pydantic import BaseModel

    from myriad.api import ContractError, hookimpl
    from myriad.plugins import get_expert
    from myriad_experts_tutorial.expert import ColourStatsExpert

    section = guide_section("3. Implement the expert (`expert.py`)")
    shown = code_blocks(section, "python")[0]
    source = inspect.getsource(ColourStatsExpert)
    for line in ("def __init__(self, config: ColourStatsConfig) -> None:", "super().__init__(config, config.mode)"):
        assert line in shown and line in source, line
    assert list(inspect.signature(ColourStatsExpert.__init__).parameters) == ["self", "config"]
    assert "super().__init__(config, mode)`;" not in GUIDE.read_text()  # the old, wrong instruction

    calls: list[tuple[tuple, dict]] = []

    class Config(BaseModel):
        size: int = 32

    def factory(*args, **kwargs):
        calls.append((args, kwargs))
        return ColourStatsExpert(ColourStatsExpert.Config(size=args[0].size))

    @hookimpl
    def register_experts(register):
        register("recorded", factory=factory, config=Config, modes=["few_shot"], description="Records its call.")

    myriad_plugin(types.SimpleNamespace(register_experts=register_experts), name="recording-plugin")
    with pytest.raises(ContractError):  # the recorder returns a class that disagrees with the registration
        get_expert("recorded", {"size": 24})
    assert len(calls) == 1
    (args, kwargs), = calls
    assert kwargs == {} and len(args) == 1 and isinstance(args[0], Config) and args[0].size == 24


def test_the_test_file_shown_is_the_tutorials() -> None:
    """The guide's kit example is the tutorial's test file, word for word."""
    shown = code_blocks(guide_section("4. Test it with the kit"), "python")[0]
    assert shown in (TUTORIAL / "tests" / "test_tutorial_contract.py").read_text()


def test_the_guide_states_the_score_map_rule_with_the_kits_tolerance() -> None:
    """The rule (calibrated score = calibrated map's maximum) is stated, with the kit's tolerance."""
    from myriad.testing import ODD_SIZES, SCORE_MAP_TOLERANCE

    text = GUIDE.read_text()
    assert "score is on its map's scale" in text
    assert "the score equals the calibrated map's maximum" in text
    assert f"{SCORE_MAP_TOLERANCE}" in text and "SCORE_MAP_TOLERANCE" in text
    for height, width in ODD_SIZES:
        assert f"{height} x {width}" in text


@pytest.mark.parametrize("folder", PLUGIN_FOLDERS, ids=lambda p: p.name)
def test_each_plugin_folder_follows_the_template(folder: Path) -> None:
    """[build-system], pinned dependencies, a test extra, py.typed shipped, tests named after the plugin."""
    import tomllib

    from packaging.requirements import Requirement

    name = plugin_name(folder)
    package = f"myriad_experts_{name}"
    meta = tomllib.loads((folder / "pyproject.toml").read_text())
    assert meta["build-system"]["build-backend"] == "setuptools.build_meta"
    assert meta["project"]["requires-python"] == ">=3.10"
    for requirement in map(Requirement, meta["project"]["dependencies"]):
        assert requirement.specifier and all(s.operator == ">=" for s in requirement.specifier), (
            f"{folder.name}: dependency {requirement} must be pinned from below (>=)"
        )
    test_extra = [Requirement(r).name for r in meta["project"]["optional-dependencies"]["test"]]
    assert "pytest" in test_extra
    assert (folder / package / "py.typed").is_file()
    assert meta["tool"]["setuptools"]["package-data"][package] == ["py.typed"]
    assert list(meta["project"]["entry-points"]["myriad"].values()) == [f"{package}.plugin"]
    tests = sorted(p.name for p in (folder / "tests").glob("test_*.py"))
    assert f"test_{name}_contract.py" in tests
    assert all(t.startswith(f"test_{name}_") for t in tests), f"{folder.name}/tests: {tests}"
