"""The authors' Myriad checkpoint (LoRRA / VPG / TPG) in and out."""

from __future__ import annotations

import pytest
import torch

from myriad.errors import WeightsError
from myriad.lmm.checkpoints import export_myriad_checkpoint, load_myriad_checkpoint, map_myriad_keys, myriad_state_dict

from .conftest import assert_equal, myriad_checkpoint, myriad_model_state, tiny_config

AUTHORS_KEYS = (
    ["expert_adaptor.conv1.weight", "expert_adaptor.conv2.weight"]
    + [f"VEInstructor.meta_net.{i}.{k}" for i in (0, 3, 6, 9, 12, 15) for k in ("weight", "bias")]
    + [f"VETokenizer.meta_net.{i}.{k}" for i in (0, 3, 6, 9, 12, 15) for k in ("weight", "bias")]
    + ["VETokenizer.base_prompts"]
)


def _check_loaded(model, s: dict) -> None:
    ve = model.vision_encoder
    if "expert_adaptor.conv1.weight" in s:
        assert_equal(ve.lorra.down.weight, s["expert_adaptor.conv1.weight"].reshape(ve.lorra.down.weight.shape))
        assert_equal(ve.lorra.up.weight, s["expert_adaptor.conv2.weight"].reshape(ve.lorra.up.weight.shape))
    for idx in (0, 3, 6, 9, 12, 15):
        for kind in ("weight", "bias"):
            if f"VEInstructor.meta_net.{idx}.{kind}" in s:
                assert_equal(getattr(ve.vpg.net[idx], kind), s[f"VEInstructor.meta_net.{idx}.{kind}"])
            if f"VETokenizer.meta_net.{idx}.{kind}" in s:
                assert_equal(getattr(model.tpg.net[idx], kind), s[f"VETokenizer.meta_net.{idx}.{kind}"])
    if "VETokenizer.base_prompts" in s:
        assert_equal(model.tpg.base_prompts, s["VETokenizer.base_prompts"])


def test_authors_checkpoint_exact(model, tmp_path) -> None:
    s = myriad_model_state()
    assert sorted(s) == sorted(AUTHORS_KEYS)
    path = tmp_path / "checkpoint_best.pth"
    torch.save(myriad_checkpoint(s), path)
    report = load_myriad_checkpoint(model, path)
    _check_loaded(model, s)
    assert sorted(report.parts) == ["lorra", "tpg", "vpg"]
    assert report.missing == [] and len(report.loaded) == len(AUTHORS_KEYS)
    assert sorted(report.unexpected) == ["Qformer.bert.embeddings.position_ids", "llama_model.model.layers.0.self_attn.rotary_emb.inv_freq"]


def test_conv_shaped_lorra_is_squeezed(model, tmp_path) -> None:
    s = myriad_model_state(conv_shaped_lorra=True)
    mapped = map_myriad_keys(s)
    assert mapped.parts["lorra"]["down.weight"].shape == (4, 32)
    assert any("squeezed" in n for n in mapped.notes)
    path = tmp_path / "conv.pth"
    torch.save({"model": s}, path)
    load_myriad_checkpoint(model, path)
    _check_loaded(model, s)


def test_partial_checkpoint_is_reported_or_refused(model, tmp_path) -> None:
    s = myriad_model_state(parts=("tpg",))
    path = tmp_path / "tpg_only.pth"
    torch.save({"model": s}, path)
    lorra_before = model.vision_encoder.lorra.down.weight.clone()
    report = load_myriad_checkpoint(model, path)
    assert report.parts == ["tpg"]
    assert "vision_encoder.lorra.down.weight" in report.missing and "vision_encoder.vpg.net.15.bias" in report.missing
    assert not report.complete
    assert torch.equal(model.vision_encoder.lorra.down.weight, lorra_before)
    with pytest.raises(WeightsError, match="part 'lorra' are not in the checkpoint"):
        load_myriad_checkpoint(model, path, strict=True)


def test_ablated_model_reports_unused_parts(tmp_path) -> None:
    from myriad.lmm.model import MyriadLMM

    model = MyriadLMM(tiny_config(use_vpg=False))
    path = tmp_path / "full.pth"
    s = myriad_model_state()
    torch.save({"model": s}, path)
    report = load_myriad_checkpoint(model, path)
    assert "VEInstructor.meta_net.0.weight" in report.unexpected
    assert any("'vpg' is switched off" in n for n in report.notes)
    _check_loaded(model, {k: v for k, v in s.items() if not k.startswith("VEInstructor")})


def test_refusals(model, tmp_path) -> None:
    s = myriad_model_state()
    s["VETokenizer.base_prompts"] = torch.zeros(9, 4096)
    path = tmp_path / "paper_size.pth"
    torch.save({"model": s}, path)
    with pytest.raises(WeightsError, match=r"'VETokenizer\.base_prompts' has shape \(9, 4096\).*expects \(9, 64\)"):
        load_myriad_checkpoint(model, path)
    path = tmp_path / "other.pth"
    torch.save({"model": {"encoder.weight": torch.zeros(3)}, "epoch": 1}, path)
    with pytest.raises(WeightsError, match="does not look like a Myriad checkpoint"):
        load_myriad_checkpoint(model, path)
    path = tmp_path / "no_tensors.pth"
    torch.save({"epoch": 1, "config": {"a": 1}}, path)
    with pytest.raises(WeightsError, match="no tensors found"):
        load_myriad_checkpoint(model, path)
    with pytest.raises(WeightsError, match="not found"):
        load_myriad_checkpoint(model, tmp_path / "missing.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_export_round_trip(model, cfg, tmp_path, suffix) -> None:
    from myriad.lmm.model import MyriadLMM

    path = export_myriad_checkpoint(model, tmp_path / f"myriad{suffix}")
    if suffix == ".pth":
        raw = torch.load(path, weights_only=True)
        assert list(raw) == ["model"] and sorted(raw["model"]) == sorted(AUTHORS_KEYS)
        assert raw["model"]["expert_adaptor.conv1.weight"].shape == (4, 32)  # the authors' Linear(1408 -> 4) layout
    torch.manual_seed(123)
    other = MyriadLMM(cfg)
    report = load_myriad_checkpoint(other, path, strict=True)
    assert report.complete and report.unexpected == []
    for key, tensor in model.trainable_state_dict().items():
        assert_equal(other.state_dict()[key], tensor, key)
    assert sorted(myriad_state_dict(other)) == sorted(AUTHORS_KEYS)


def test_export_refuses_unloaded_parts(empty_model, tmp_path) -> None:
    with pytest.raises(WeightsError, match="meta device"):
        export_myriad_checkpoint(empty_model, tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()
