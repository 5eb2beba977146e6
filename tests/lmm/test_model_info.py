"""``myriad model-info`` counts parameters on the meta device."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from myriad.commands.model_info import model_info_command  # noqa: E402


def test_paper_counts_json():
    result = CliRunner().invoke(model_info_command, ["--preset", "paper", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    parts = {p["name"]: p for p in info["parts"]}
    assert parts["lorra"]["params"] == 11_264
    assert 3.30e6 < parts["vpg"]["params"] < 3.32e6
    assert 107.3e6 < parts["tpg"]["params"] < 107.5e6
    assert {n for n, p in parts.items() if p["trainable"]} == {"lorra", "vpg", "tpg"}
    assert parts["backbone"]["params"] == 985_949_440  # EVA ViT-g, 39 blocks, no final norm
    assert parts["qformer"]["params"] == 105_137_664
    assert parts["language_projection"]["params"] == 768 * 4096 + 4096
    assert parts["language_model"]["params"] == 6_738_415_616
    assert info["trainable"] == 11_264 + parts["vpg"]["params"] + parts["tpg"]["params"]
    assert info["tokens"]["image_tokens_to_llm"] == 99


def test_mini_table_and_ablation():
    result = CliRunner().invoke(model_info_command, ["--preset", "mini"])
    assert result.exit_code == 0, result.output
    assert "SmolLM2-135M-Instruct" in result.output and "trainable" in result.output
    result = CliRunner().invoke(model_info_command, ["--preset", "paper", "--without", "tpg", "--json"])
    parts = {p["name"]: p for p in json.loads(result.output)["parts"]}
    assert parts["tpg"]["params"] == 0 and not parts["tpg"]["built"]
