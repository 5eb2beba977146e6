"""LAVIS blip2_pretrained_*.pth and Hugging Face BLIP-2 directories -> Q-Former, query tokens, ln_vision (+ ViT)."""

from __future__ import annotations

import json

import pytest
import torch

from myriad.errors import WeightsError
from myriad.lmm.checkpoints import load_hf_blip2, load_lavis_blip2, map_lavis_qformer_keys

from .conftest import Q_LAYERS, V_DIM, assert_equal, eva_state, lavis_blip2_state, write_hf_blip2_dir

QF = "vision_encoder.qformer."


def _qformer_pairs(state: dict) -> dict[str, str]:
    """Model key -> LAVIS key, spelled out independently of the mapper."""
    pairs = {QF + "layernorm.weight": "Qformer.bert.embeddings.LayerNorm.weight", QF + "layernorm.bias": "Qformer.bert.embeddings.LayerNorm.bias"}
    for i in range(Q_LAYERS):
        src, dst = f"Qformer.bert.encoder.layer.{i}.", f"{QF}encoder.layer.{i}."
        for att in ("attention", "crossattention"):
            if f"{src}{att}.self.query.weight" not in state:
                continue
            for name in ("query", "key", "value"):
                for kind in ("weight", "bias"):
                    pairs[f"{dst}{att}.attention.{name}.{kind}"] = f"{src}{att}.self.{name}.{kind}"
            for sub in ("dense", "LayerNorm"):
                for kind in ("weight", "bias"):
                    pairs[f"{dst}{att}.output.{sub}.{kind}"] = f"{src}{att}.output.{sub}.{kind}"
        for kind in ("weight", "bias"):
            pairs[f"{dst}intermediate_query.dense.{kind}"] = f"{src}intermediate_query.dense.{kind}"
            pairs[f"{dst}output_query.dense.{kind}"] = f"{src}output_query.dense.{kind}"
            pairs[f"{dst}output_query.LayerNorm.{kind}"] = f"{src}output_query.LayerNorm.{kind}"
    return pairs


def test_qformer_mapping_drops_text_parts() -> None:
    state = lavis_blip2_state()
    mapped = map_lavis_qformer_keys(state)
    q = mapped.parts["qformer"]
    assert q["encoder.layer.0.crossattention.attention.key.weight"] is state["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"]
    assert q["encoder.layer.1.attention.attention.query.bias"] is state["Qformer.bert.encoder.layer.1.attention.self.query.bias"]
    assert q["layernorm.weight"] is state["Qformer.bert.embeddings.LayerNorm.weight"]
    text_only = {
        "Qformer.bert.embeddings.word_embeddings.weight",
        "Qformer.bert.embeddings.position_embeddings.weight",
        "Qformer.bert.embeddings.position_ids",
        "Qformer.bert.encoder.layer.0.intermediate.dense.weight",
        "Qformer.bert.encoder.layer.1.output.LayerNorm.bias",
        "Qformer.cls.predictions.decoder.weight",
    }
    assert text_only <= set(mapped.unexpected)
    assert not any("_query" in k for k in mapped.unexpected)


def test_lavis_blip2_exact(model, tmp_path) -> None:
    state = lavis_blip2_state()
    path = tmp_path / "blip2_pretrained_flant5xxl.pth"
    torch.save({"model": state}, path)
    before = model.vision_encoder.backbone.vision_model.embeddings.class_embedding.clone()
    report = load_lavis_blip2(model, path)
    sd = model.state_dict()
    pairs = _qformer_pairs(state)
    qformer_keys = [k for k in sd if k.startswith(QF)]
    assert sorted(pairs) == sorted(qformer_keys)  # every Q-Former tensor has a source
    for dst, src in pairs.items():
        assert_equal(sd[dst], state[src], dst)
    assert_equal(sd["vision_encoder.query_tokens"], state["query_tokens"])
    assert_equal(sd["vision_encoder.ln_vision.weight"], state["ln_vision.weight"])
    assert_equal(sd["vision_encoder.ln_vision.bias"], state["ln_vision.bias"])
    assert sorted(report.parts) == ["ln_vision", "qformer", "query_tokens"]
    assert report.missing == []
    assert {"t5_proj.weight", "Qformer.cls.predictions.bias", "Qformer.bert.encoder.layer.1.intermediate.dense.bias"} <= set(report.unexpected)
    assert len(report.loaded) == len(pairs) + 3
    assert torch.equal(model.vision_encoder.backbone.vision_model.embeddings.class_embedding, before)  # no ViT in file


def test_lavis_blip2_with_visual_encoder_overrides_backbone(model, tmp_path) -> None:
    state = lavis_blip2_state(with_vision=True)
    path = tmp_path / "blip2_full.pth"
    torch.save({"model": state}, path)
    report = load_lavis_blip2(model, path)
    assert "backbone" in report.parts
    vm = model.vision_encoder.backbone.vision_model
    assert_equal(vm.embeddings.class_embedding, state["visual_encoder.cls_token"])
    assert_equal(vm.encoder.layers[1].self_attn.qkv.bias[2 * V_DIM :], state["visual_encoder.blocks.1.attn.v_bias"])
    assert "visual_encoder.blocks.2.attn.qkv.weight" in report.unexpected
    path2 = tmp_path / "blip2_full2.pth"
    torch.save({"model": lavis_blip2_state(seed=9, with_vision=True)}, path2)
    report2 = load_lavis_blip2(model, path2, include_visual_encoder=False)
    assert "backbone" not in report2.parts and "visual_encoder.cls_token" in report2.unexpected
    assert_equal(vm.embeddings.class_embedding, state["visual_encoder.cls_token"])


def test_lavis_blip2_refusals(model, tmp_path) -> None:
    # cross-attention in every layer: the model (every 2nd layer) has no place for layer 1's
    path = tmp_path / "every_layer.pth"
    torch.save({"model": lavis_blip2_state(cross_every=1)}, path)
    with pytest.raises(WeightsError, match=r"layer\.1\.crossattention.*does not have"):
        load_lavis_blip2(model, path)
    # wrong number of query tokens
    state = lavis_blip2_state()
    state["query_tokens"] = torch.zeros(1, 32, state["query_tokens"].shape[-1])
    path = tmp_path / "tokens.pth"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsError, match=r"'query_tokens' has shape \(1, 32, 32\).*expects \(1, 4, 32\)"):
        load_lavis_blip2(model, path)
    # ln_vision missing
    state = lavis_blip2_state()
    del state["ln_vision.bias"]
    path = tmp_path / "no_ln.pth"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsError, match="ln_vision"):
        load_lavis_blip2(model, path)
    # an EVA file given as the BLIP-2 file
    path = tmp_path / "eva.pth"
    torch.save(eva_state(), path)
    with pytest.raises(WeightsError, match="does not look like a LAVIS BLIP-2 checkpoint"):
        load_lavis_blip2(model, path)


@pytest.mark.parametrize("old_bias_layout", [False, True])
def test_hf_blip2_directory_exact(model, cfg, tmp_path, old_bias_layout) -> None:
    directory = tmp_path / "blip2-hf"
    state = write_hf_blip2_dir(directory, cfg, old_bias_layout=old_bias_layout)
    report = load_hf_blip2(model, directory)
    sd = model.state_dict()
    for key, tensor in state.items():
        if key.startswith("vision_model.post_layernorm."):
            assert_equal(sd["vision_encoder.ln_vision." + key.rsplit(".", 1)[1]], tensor, key)
        elif key.endswith(("self_attn.q_bias", "self_attn.v_bias")):
            layer = key.split(".")[3]
            bias = sd[f"vision_encoder.backbone.vision_model.encoder.layers.{layer}.self_attn.qkv.bias"]
            part = bias[:V_DIM] if key.endswith("q_bias") else bias[2 * V_DIM :]
            assert_equal(part, tensor, key)
            assert torch.count_nonzero(bias[V_DIM : 2 * V_DIM]) == 0
        elif key.startswith("vision_model."):
            assert_equal(sd["vision_encoder.backbone." + key], tensor, key)
        elif key.startswith("qformer."):
            assert_equal(sd["vision_encoder." + key], tensor, key)
        else:
            assert_equal(sd["vision_encoder.query_tokens"], tensor, key)
    assert sorted(report.parts) == ["backbone", "ln_vision", "qformer", "query_tokens"]
    assert report.missing == []
    assert {"language_projection.weight", "language_model.model.decoder.layers.0.fc1.weight"} <= set(report.unexpected)


def test_hf_blip2_refusals(model, cfg, tmp_path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_hf_blip2(model, tmp_path / "absent")
    directory = tmp_path / "blip2-hf"
    write_hf_blip2_dir(directory, cfg)
    config = json.loads((directory / "config.json").read_text())
    config["num_query_tokens"] = 32
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"config\.json.*num_query_tokens: file 32, model 4"):
        load_hf_blip2(model, directory)
    config["num_query_tokens"] = 4
    config["model_type"] = "llama"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="not a BLIP-2 model"):
        load_hf_blip2(model, directory)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match="no weights found"):
        load_hf_blip2(model, empty)
