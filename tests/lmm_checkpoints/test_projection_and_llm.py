"""MiniGPT-4 llama_proj -> language_projection; Hugging Face LLaMA/Vicuna directory -> language_model."""

from __future__ import annotations

import json

import pytest
import torch

from myriad.errors import WeightsError
from myriad.lmm.checkpoints import load_minigpt4_projection, load_vicuna

from .conftest import assert_equal, minigpt4_state, write_vicuna_dir


def test_minigpt4_projection_exact(model, tmp_path) -> None:
    ckpt = minigpt4_state()
    ckpt["model"]["llama_model.fake"] = torch.zeros(2)
    path = tmp_path / "pretrained_minigpt4_7b.pth"
    torch.save(ckpt, path)
    report = load_minigpt4_projection(model, path)
    proj = model.vision_encoder.language_projection
    assert_equal(proj.weight, ckpt["model"]["llama_proj.weight"])
    assert_equal(proj.bias, ckpt["model"]["llama_proj.bias"])
    assert report.parts == ["language_projection"] and report.unexpected == ["llama_model.fake"]
    assert sorted(report.loaded) == ["vision_encoder.language_projection.bias", "vision_encoder.language_projection.weight"]


def test_minigpt4_refusals(model, tmp_path) -> None:
    path = tmp_path / "minigpt4_13b.pth"
    torch.save(minigpt4_state(out_dim=80), path)
    with pytest.raises(WeightsError, match=r"'llama_proj\.weight' has shape \(80, 32\).*expects \(64, 32\)"):
        load_minigpt4_projection(model, path)
    path = tmp_path / "half.pth"
    torch.save({"model": {"llama_proj.weight": torch.zeros(64, 32)}}, path)
    with pytest.raises(WeightsError, match="not in the checkpoint"):
        load_minigpt4_projection(model, path)
    path = tmp_path / "other.pth"
    torch.save({"model": {"opt_proj.weight": torch.zeros(64, 32)}}, path)
    with pytest.raises(WeightsError, match="does not look like a MiniGPT-4 checkpoint"):
        load_minigpt4_projection(model, path)


def test_vicuna_sharded_safetensors_exact(empty_model, cfg, tmp_path) -> None:
    directory = tmp_path / "vicuna-7b"
    state = write_vicuna_dir(directory, cfg)
    assert len(list(directory.glob("*.safetensors"))) > 1  # really sharded
    report = load_vicuna(empty_model, directory)
    sd = empty_model.language_model.state_dict()
    for key, tensor in state.items():
        assert_equal(sd[key], tensor, key)
        assert sd[key].dtype == torch.float16
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == len(state)


def test_vicuna_legacy_bin_reports_inv_freq(model, cfg, tmp_path) -> None:
    directory = tmp_path / "vicuna-bin"
    state = write_vicuna_dir(directory, cfg, fmt="bin")
    report = load_vicuna(model, directory)
    assert_equal(model.language_model.lm_head.weight, state["lm_head.weight"])
    assert_equal(model.language_model.model.layers[1].mlp.down_proj.weight, state["model.layers.1.mlp.down_proj.weight"])
    assert sorted(report.unexpected) == [f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(2)]
    assert any("inv_freq" in n for n in report.notes)


def test_vicuna_refusals(model, cfg, tmp_path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_vicuna(model, tmp_path / "absent")
    directory = tmp_path / "vicuna"
    write_vicuna_dir(directory, cfg)
    config = json.loads((directory / "config.json").read_text())
    config["vocab_size"] = 32001
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"config\.json.*vocab_size: file 32001, model 96.*paper_config\(llm={.vocab_size.: 32001}\)"):
        load_vicuna(model, directory)
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    with pytest.raises(WeightsError, match="config.json"):
        load_vicuna(model, no_config)
    # a shard set that lacks a tensor
    cut = tmp_path / "cut"
    state = write_vicuna_dir(cut, cfg, fmt="bin")
    del state["model.norm.weight"]
    torch.save(state, cut / "pytorch_model.bin")
    with pytest.raises(WeightsError, match=r"not in any shard.*model\.norm\.weight"):
        load_vicuna(model, cut)
