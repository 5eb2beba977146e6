"""Tiny ``paper`` models and checkpoints written in the ORIGINAL key layouts (random tensors, tiny shapes).

The writers name every tensor the way the published files do (LAVIS EVA ViT-g, LAVIS
BLIP-2, MiniGPT-4, the authors' Myriad runner, Hugging Face BLIP-2 / LLaMA), independently
of the mapping code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from myriad.lmm.config import MyriadConfig, paper_config

V_DIM, V_LAYERS, V_HEADS, V_MLP, IMAGE, PATCH = 32, 2, 4, 64, 28, 14
Q_DIM, Q_LAYERS, Q_HEADS, Q_MLP, Q_TOKENS = 32, 2, 4, 64, 4
L_DIM, L_LAYERS, L_HEADS, L_MLP, VOCAB = 64, 2, 4, 128, 96
TRUNK = (1, 2, 4, 4, 8, 8)
RANK = 4


def tiny_config(**changes: object) -> MyriadConfig:
    cfg = paper_config(
        vision={
            "hidden_size": V_DIM,
            "num_layers": V_LAYERS,
            "num_heads": V_HEADS,
            "intermediate_size": V_MLP,
            "image_size": IMAGE,
            "patch_size": PATCH,
        },
        qformer={
            "hidden_size": Q_DIM,
            "num_layers": Q_LAYERS,
            "num_heads": Q_HEADS,
            "intermediate_size": Q_MLP,
            "num_query_tokens": Q_TOKENS,
            "cross_attention_frequency": 2,
        },
        llm={
            "name": "tiny-vicuna",
            "hidden_size": L_DIM,
            "num_layers": L_LAYERS,
            "num_heads": L_HEADS,
            "num_kv_heads": L_HEADS,
            "intermediate_size": L_MLP,
            "vocab_size": VOCAB,
            "max_position_embeddings": 128,
        },
        prompt_generators={"trunk_channels": TRUNK},
        lorra={"rank": RANK},
    )
    return cfg.replace(**changes) if changes else cfg


@pytest.fixture(scope="session")
def cfg() -> MyriadConfig:
    # paper dtypes: the frozen ViT and LLM are stored in float16, the rest in float32
    return tiny_config()


@pytest.fixture
def model(cfg):
    from myriad.lmm.model import MyriadLMM

    torch.manual_seed(0)
    return MyriadLMM(cfg)


@pytest.fixture
def empty_model(cfg):
    from myriad.lmm.model import MyriadLMM

    return MyriadLMM.empty(cfg)


def _r(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


# ----------------------------------------------------------------------------- LAVIS EVA ViT-g
def eva_state(seed: int = 1, blocks: int = V_LAYERS + 1, dim: int = V_DIM, prefix: str = "") -> dict[str, torch.Tensor]:
    """``eva_vit_g.pth`` names; one block more than the model uses (BLIP-2 drops the last)."""
    g = torch.Generator().manual_seed(seed)
    tokens = (IMAGE // PATCH) ** 2 + 1
    s = {
        "cls_token": _r(g, 1, 1, dim),
        "pos_embed": _r(g, 1, tokens, dim),
        "patch_embed.proj.weight": _r(g, dim, 3, PATCH, PATCH),
        "patch_embed.proj.bias": _r(g, dim),
    }
    for i in range(blocks):
        b = f"blocks.{i}."
        s |= {
            b + "norm1.weight": _r(g, dim),
            b + "norm1.bias": _r(g, dim),
            b + "attn.q_bias": _r(g, dim),
            b + "attn.v_bias": _r(g, dim),
            b + "attn.qkv.weight": _r(g, 3 * dim, dim),
            b + "attn.proj.weight": _r(g, dim, dim),
            b + "attn.proj.bias": _r(g, dim),
            b + "norm2.weight": _r(g, dim),
            b + "norm2.bias": _r(g, dim),
            b + "mlp.fc1.weight": _r(g, V_MLP, dim),
            b + "mlp.fc1.bias": _r(g, V_MLP),
            b + "mlp.fc2.weight": _r(g, dim, V_MLP),
            b + "mlp.fc2.bias": _r(g, dim),
        }
    return {prefix + k: v for k, v in s.items()}


# ----------------------------------------------------------------------------- LAVIS BLIP-2
def lavis_blip2_state(seed: int = 2, cross_every: int = 2, with_vision: bool = False) -> dict[str, torch.Tensor]:
    """``blip2_pretrained_*.pth``'s ``"model"``: full BERT Q-Former (text parts included), tokens, ln_vision."""
    g = torch.Generator().manual_seed(seed)
    qb = "Qformer.bert."
    s = {
        qb + "embeddings.word_embeddings.weight": _r(g, 50, Q_DIM),
        qb + "embeddings.position_embeddings.weight": _r(g, 16, Q_DIM),
        qb + "embeddings.position_ids": torch.arange(16).unsqueeze(0),
        qb + "embeddings.LayerNorm.weight": _r(g, Q_DIM),
        qb + "embeddings.LayerNorm.bias": _r(g, Q_DIM),
    }
    for i in range(Q_LAYERS):
        L = f"{qb}encoder.layer.{i}."
        for name in ("query", "key", "value"):
            s[L + f"attention.self.{name}.weight"] = _r(g, Q_DIM, Q_DIM)
            s[L + f"attention.self.{name}.bias"] = _r(g, Q_DIM)
        s[L + "attention.output.dense.weight"] = _r(g, Q_DIM, Q_DIM)
        s[L + "attention.output.dense.bias"] = _r(g, Q_DIM)
        s[L + "attention.output.LayerNorm.weight"] = _r(g, Q_DIM)
        s[L + "attention.output.LayerNorm.bias"] = _r(g, Q_DIM)
        if i % cross_every == 0:
            s[L + "crossattention.self.query.weight"] = _r(g, Q_DIM, Q_DIM)
            s[L + "crossattention.self.query.bias"] = _r(g, Q_DIM)
            for name in ("key", "value"):
                s[L + f"crossattention.self.{name}.weight"] = _r(g, Q_DIM, V_DIM)
                s[L + f"crossattention.self.{name}.bias"] = _r(g, Q_DIM)
            s[L + "crossattention.output.dense.weight"] = _r(g, Q_DIM, Q_DIM)
            s[L + "crossattention.output.dense.bias"] = _r(g, Q_DIM)
            s[L + "crossattention.output.LayerNorm.weight"] = _r(g, Q_DIM)
            s[L + "crossattention.output.LayerNorm.bias"] = _r(g, Q_DIM)
        for ffn in ("", "_query"):
            s[L + f"intermediate{ffn}.dense.weight"] = _r(g, Q_MLP, Q_DIM)
            s[L + f"intermediate{ffn}.dense.bias"] = _r(g, Q_MLP)
            s[L + f"output{ffn}.dense.weight"] = _r(g, Q_DIM, Q_MLP)
            s[L + f"output{ffn}.dense.bias"] = _r(g, Q_DIM)
            s[L + f"output{ffn}.LayerNorm.weight"] = _r(g, Q_DIM)
            s[L + f"output{ffn}.LayerNorm.bias"] = _r(g, Q_DIM)
    s |= {
        "Qformer.cls.predictions.bias": _r(g, 50),
        "Qformer.cls.predictions.transform.dense.weight": _r(g, Q_DIM, Q_DIM),
        "Qformer.cls.predictions.decoder.weight": _r(g, 50, Q_DIM),
        "query_tokens": _r(g, 1, Q_TOKENS, Q_DIM),
        "ln_vision.weight": _r(g, V_DIM),
        "ln_vision.bias": _r(g, V_DIM),
        "t5_proj.weight": _r(g, 48, Q_DIM),
        "t5_proj.bias": _r(g, 48),
    }
    if with_vision:
        s |= eva_state(seed + 100, prefix="visual_encoder.")
    return s


# ----------------------------------------------------------------------------- MiniGPT-4
def minigpt4_state(seed: int = 3, out_dim: int = L_DIM) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"model": {"llama_proj.weight": _r(g, out_dim, Q_DIM), "llama_proj.bias": _r(g, out_dim)}}


# ----------------------------------------------------------------------------- the authors' Myriad checkpoint
def myriad_model_state(seed: int = 4, conv_shaped_lorra: bool = False, parts=("lorra", "vpg", "tpg")) -> dict:
    """The authors' trainable keys (networks.py / myriad.py) plus buffers the runner keeps."""
    g = torch.Generator().manual_seed(seed)
    s: dict[str, torch.Tensor] = {}
    if "lorra" in parts:
        down, up = _r(g, RANK, V_DIM), _r(g, V_DIM, RANK)
        if conv_shaped_lorra:
            down, up = down[:, :, None, None], up[:, :, None, None]
        s |= {"expert_adaptor.conv1.weight": down, "expert_adaptor.conv2.weight": up}
    trunk = [(TRUNK[i], TRUNK[i + 1], 3) for i in range(len(TRUNK) - 1)]
    for module, head in (("VEInstructor", (TRUNK[-1], Q_DIM, 1)), ("VETokenizer", (TRUNK[-1], L_DIM, 5))):
        if {"VEInstructor": "vpg", "VETokenizer": "tpg"}[module] not in parts:
            continue
        for idx, (c_in, c_out, k) in zip(range(0, 18, 3), trunk + [head]):
            s[f"{module}.meta_net.{idx}.weight"] = _r(g, c_out, c_in, k, k)
            s[f"{module}.meta_net.{idx}.bias"] = _r(g, c_out)
    if "tpg" in parts:
        s["VETokenizer.base_prompts"] = _r(g, 9, L_DIM)
    return s


def myriad_checkpoint(model_state: dict) -> dict:
    """Wrapped as the runner's ``_save_checkpoint`` does (buffers of frozen parts stay in ``model``)."""
    junk = {
        "Qformer.bert.embeddings.position_ids": torch.arange(16).unsqueeze(0),
        "llama_model.model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8),
    }
    return {
        "model": {**model_state, **junk},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 0.05, "params": [0, 1, 2]}]},
        "config": {"model": {"arch": "myriad", "k_shot": 1}, "run": {"init_lr": 1e-4}},
        "scaler": None,
        "epoch": 9,
    }


# ----------------------------------------------------------------------------- Hugging Face directories
def write_hf_blip2_dir(directory: Path, cfg: MyriadConfig, seed: int = 5, old_bias_layout: bool = False) -> dict[str, torch.Tensor]:
    """A BLIP-2 directory as transformers writes it (names from real transformers modules), in two shards."""
    from safetensors.torch import save_file
    from transformers import Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel

    torch.manual_seed(seed)
    v = Blip2VisionModel(
        Blip2VisionConfig(
            hidden_size=V_DIM, intermediate_size=V_MLP, num_hidden_layers=V_LAYERS, num_attention_heads=V_HEADS,
            image_size=IMAGE, patch_size=PATCH, layer_norm_eps=1e-6,
        )
    )
    q = Blip2QFormerModel(
        Blip2QFormerConfig(
            hidden_size=Q_DIM, num_hidden_layers=Q_LAYERS, num_attention_heads=Q_HEADS, intermediate_size=Q_MLP,
            encoder_hidden_size=V_DIM, cross_attention_frequency=2,
        )
    )
    for p in list(v.parameters()) + list(q.parameters()):
        torch.nn.init.normal_(p)  # every value distinct from the target's initialisation
    state = {f"vision_model.{k}": t.clone() for k, t in v.state_dict().items()}
    state |= {f"qformer.{k}": t.clone() for k, t in q.state_dict().items()}
    state["query_tokens"] = torch.randn(1, Q_TOKENS, Q_DIM)
    if old_bias_layout:
        for i in range(V_LAYERS):
            bias = state.pop(f"vision_model.encoder.layers.{i}.self_attn.qkv.bias")
            state[f"vision_model.encoder.layers.{i}.self_attn.q_bias"] = bias[:V_DIM].clone()
            state[f"vision_model.encoder.layers.{i}.self_attn.v_bias"] = bias[2 * V_DIM :].clone()
    llm = {
        "language_projection.weight": torch.randn(48, Q_DIM),
        "language_projection.bias": torch.randn(48),
        "language_model.model.decoder.layers.0.fc1.weight": torch.randn(8, 8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: t.contiguous() for k, t in state.items()}, str(directory / "model-00001-of-00002.safetensors"))
    save_file(llm, str(directory / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in state} | {k: "model-00002-of-00002.safetensors" for k in llm}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "config.json").write_text(
        json.dumps(
            {
                "model_type": "blip-2",
                "num_query_tokens": Q_TOKENS,
                "vision_config": {"hidden_size": V_DIM, "num_hidden_layers": V_LAYERS},
                "qformer_config": {"hidden_size": Q_DIM, "num_hidden_layers": Q_LAYERS},
            }
        )
    )
    return state


def write_vicuna_dir(directory: Path, cfg: MyriadConfig, seed: int = 6, fmt: str = "safetensors") -> dict[str, torch.Tensor]:
    """A LLaMA directory: ``save_pretrained`` (sharded safetensors) or a legacy ``pytorch_model.bin`` with inv_freq."""
    from myriad.lmm.model import build_language_model

    torch.manual_seed(seed)
    lm = build_language_model(cfg)
    for p in lm.parameters():
        torch.nn.init.normal_(p)
    state = {k: t.clone() for k, t in lm.state_dict().items()}
    if fmt == "safetensors":
        lm.save_pretrained(str(directory), max_shard_size="64KB")
    else:
        directory.mkdir(parents=True, exist_ok=True)
        lm.config.to_json_file(str(directory / "config.json"))
        legacy = dict(state)
        for i in range(L_LAYERS):
            legacy[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.ones(L_DIM // L_HEADS // 2)
        torch.save(legacy, str(directory / "pytorch_model.bin"))
    return state


def assert_equal(actual: torch.Tensor, expected: torch.Tensor, name: str = "") -> None:
    assert tuple(actual.shape) == tuple(expected.shape), name
    assert not actual.is_meta, f"{name} is still on the meta device"
    assert torch.equal(actual, expected.to(actual.dtype)), f"{name} differs"
