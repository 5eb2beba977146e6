"""LAVIS eva_vit_g.pth -> Blip2VisionModel backbone."""

from __future__ import annotations

import pytest
import torch

from myriad.errors import WeightsError
from myriad.lmm.checkpoints import load_eva_vit, map_eva_vit_keys

from .conftest import V_DIM, V_LAYERS, assert_equal, eva_state

VM = "vision_encoder.backbone.vision_model."


def test_mapping_renames_and_assembles_qkv_bias() -> None:
    state = eva_state()
    mapped = map_eva_vit_keys(state, num_layers=V_LAYERS)
    vit = mapped.parts["backbone"]
    assert vit["embeddings.class_embedding"] is state["cls_token"]
    assert vit["embeddings.position_embedding"] is state["pos_embed"]
    assert vit["encoder.layers.1.self_attn.projection.weight"] is state["blocks.1.attn.proj.weight"]
    assert vit["encoder.layers.0.layer_norm2.bias"] is state["blocks.0.norm2.bias"]
    bias = vit["encoder.layers.0.self_attn.qkv.bias"]
    assert torch.equal(bias[:V_DIM], state["blocks.0.attn.q_bias"])
    assert torch.equal(bias[V_DIM : 2 * V_DIM], torch.zeros(V_DIM))  # EVA has no key bias
    assert torch.equal(bias[2 * V_DIM :], state["blocks.0.attn.v_bias"])
    # the last block (BLIP-2 drops EVA's 40th) is not mapped but reported
    assert all(k.startswith(f"blocks.{V_LAYERS}.") for k in mapped.unexpected)
    assert len(mapped.unexpected) == 13
    assert any("BLIP-2 drops" in n for n in mapped.notes)
    assert len(mapped) == 4 + V_LAYERS * 12  # 13 EVA tensors per block -> 12 (q/v bias merged)


def test_mapping_strips_visual_encoder_prefix() -> None:
    mapped = map_eva_vit_keys(eva_state(prefix="visual_encoder."), num_layers=V_LAYERS)
    assert "embeddings.class_embedding" in mapped.parts["backbone"]
    assert mapped.sources["backbone"]["embeddings.class_embedding"] == "visual_encoder.cls_token"


def test_load_into_model_exact(model, tmp_path) -> None:
    state = eva_state()
    path = tmp_path / "eva_vit_g.pth"
    torch.save(state, path)
    report = load_eva_vit(model, path)
    sd = model.state_dict()
    assert_equal(sd[VM + "embeddings.class_embedding"], state["cls_token"])
    assert_equal(sd[VM + "embeddings.position_embedding"], state["pos_embed"])
    assert_equal(sd[VM + "embeddings.patch_embedding.weight"], state["patch_embed.proj.weight"])
    assert_equal(sd[VM + "embeddings.patch_embedding.bias"], state["patch_embed.proj.bias"])
    renames = {
        "norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
        "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    }
    for i in range(V_LAYERS):
        for old, new in renames.items():
            for kind in ("weight", "bias"):
                if old == "attn.qkv" and kind == "bias":
                    continue
                assert_equal(sd[f"{VM}encoder.layers.{i}.{new}.{kind}"], state[f"blocks.{i}.{old}.{kind}"], f"{i}.{old}")
        expected_bias = torch.cat([state[f"blocks.{i}.attn.q_bias"], torch.zeros(V_DIM), state[f"blocks.{i}.attn.v_bias"]])
        assert_equal(sd[f"{VM}encoder.layers.{i}.self_attn.qkv.bias"], expected_bias)
    backbone_keys = [k for k in sd if k.startswith("vision_encoder.backbone.")]
    assert sorted(report.loaded) == sorted(backbone_keys)
    assert report.missing == [] and report.complete
    assert report.parts == ["backbone"]
    assert sorted(report.unexpected) == sorted(k for k in state if k.startswith(f"blocks.{V_LAYERS}."))
    assert sd[VM + "embeddings.class_embedding"].dtype == torch.float16  # cast to the paper's frozen dtype
    assert "eva_vit" in report.summary()


def test_load_materialises_an_empty_model(empty_model, tmp_path) -> None:
    state = eva_state()
    path = tmp_path / "eva.pth"
    torch.save({"model": state}, path)  # a wrapped file is unwrapped
    load_eva_vit(empty_model, path)
    backbone = empty_model.vision_encoder.backbone
    assert not any(p.is_meta for p in backbone.parameters())
    assert_equal(backbone.vision_model.encoder.layers[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])


def test_wrong_width_is_refused_with_file_key_and_shapes(model, tmp_path) -> None:
    path = tmp_path / "eva_wide.pth"
    torch.save(eva_state(dim=48), path)
    with pytest.raises(WeightsError) as err:
        load_eva_vit(model, path)
    msg = str(err.value)
    assert str(path) in msg and "(1, 1, 48)" in msg and "(1, 1, 32)" in msg and "cls_token" in msg


def test_missing_tensor_is_refused(model, tmp_path) -> None:
    state = eva_state()
    del state["blocks.1.mlp.fc1.weight"]
    path = tmp_path / "eva_cut.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"not in the checkpoint.*layers\.1\.mlp\.fc1\.weight"):
        load_eva_vit(model, path)


def test_lone_q_bias_and_layer_scale_are_refused(model, tmp_path) -> None:
    state = eva_state()
    del state["blocks.0.attn.v_bias"]
    with pytest.raises(WeightsError, match="no partner"):
        map_eva_vit_keys(state, num_layers=V_LAYERS)
    state = eva_state()
    state["blocks.0.gamma_1"] = torch.ones(V_DIM)
    with pytest.raises(WeightsError, match="layer scale"):
        map_eva_vit_keys(state, num_layers=V_LAYERS)


def test_unrelated_file_and_missing_file(model, tmp_path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.bias": torch.zeros(10)}, path)
    with pytest.raises(WeightsError, match="does not look like an EVA ViT checkpoint"):
        load_eva_vit(model, path)
    with pytest.raises(WeightsError, match="not found"):
        load_eva_vit(model, tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.pth"):
        load_eva_vit(model, garbage)


def test_legacy_torch_save_format_is_read(model, tmp_path) -> None:
    state = eva_state()
    path = tmp_path / "eva_legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    report = load_eva_vit(model, path)
    assert report.complete
    assert_equal(model.vision_encoder.backbone.vision_model.embeddings.class_embedding, state["cls_token"])


def test_non_eva_backbone_is_refused(tmp_path) -> None:
    from myriad.lmm.config import mini_config
    from myriad.lmm.model import MyriadLMM

    path = tmp_path / "eva.pth"
    torch.save(eva_state(), path)
    with pytest.raises(WeightsError, match="vision.kind='eva_vit'.*'lite0'"):
        load_eva_vit(MyriadLMM.empty(mini_config()), path)
