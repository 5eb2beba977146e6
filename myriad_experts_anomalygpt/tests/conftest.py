"""Fixtures for the AnomalyGPT tests: tiny checkpoints in ImageBind's and AnomalyGPT's published key layouts.

The checkpoints are written key by key from the layout of facebookresearch/ImageBind
(``modality_preprocessors`` / ``modality_trunks`` / ``modality_heads`` /
``modality_postprocessors``) and AnomalyGPT's ``pytorch_model.pt`` (``image_decoder.fc.N``),
not from the plugin's own mapping, so that loading them strictly tests the mapping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from myriad.testing import brick_crops

#: A tiny ImageBind (same structure as ImageBind-Huge: 28 px, patch 7 -> 4 x 4 tokens, 4 blocks).
TINY = {
    "image_size": 28,
    "patch_size": 7,
    "width": 32,
    "layers": 4,
    "heads": 2,
    "embed_dim": 16,
    "text_width": 24,
    "text_layers": 2,
    "text_heads": 2,
    "context_length": 77,
    "vocab_size": 49408,
    "decoder_dim": 16,
}


def _block(prefix: str, width: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    r = lambda *shape, s=0.2: torch.randn(*shape, generator=g) * s  # noqa: E731
    return {
        f"{prefix}.attn.in_proj_weight": r(3 * width, width),
        f"{prefix}.attn.in_proj_bias": r(3 * width),
        f"{prefix}.attn.out_proj.weight": r(width, width),
        f"{prefix}.attn.out_proj.bias": r(width),
        f"{prefix}.norm_1.weight": 1 + r(width),
        f"{prefix}.norm_1.bias": r(width),
        f"{prefix}.mlp.fc1.weight": r(4 * width, width),
        f"{prefix}.mlp.fc1.bias": r(4 * width),
        f"{prefix}.mlp.fc2.weight": r(width, 4 * width),
        f"{prefix}.mlp.fc2.bias": r(width),
        f"{prefix}.norm_2.weight": 1 + r(width),
        f"{prefix}.norm_2.bias": r(width),
    }


def imagebind_state(arch: dict = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with ImageBind's key names and shapes (vision, text, and a stray audio part)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.2: torch.randn(*shape, generator=g) * s  # noqa: E731
    w, p, e = arch["width"], arch["patch_size"], arch["embed_dim"]
    tw, ctx = arch["text_width"], arch["context_length"]
    tokens = 1 + (arch["image_size"] // p) ** 2
    state = {
        "modality_preprocessors.vision.cls_token": r(1, 1, w),
        "modality_preprocessors.vision.rgbt_stem.proj.1.weight": r(w, 3, 2, p, p, s=0.05),
        "modality_preprocessors.vision.pos_embedding_helper.pos_embed": r(1, tokens, w),
        "modality_trunks.vision.pre_transformer_layer.0.weight": 1 + r(w),
        "modality_trunks.vision.pre_transformer_layer.0.bias": r(w),
        "modality_heads.vision.0.weight": 1 + r(w),
        "modality_heads.vision.0.bias": r(w),
        "modality_heads.vision.2.weight": r(e, w),
        "modality_preprocessors.text.token_embedding.weight": r(arch["vocab_size"], tw),
        "modality_preprocessors.text.pos_embed": r(1, ctx, tw),
        "modality_preprocessors.text.mask": torch.full((ctx, ctx), float("-inf")).triu_(1),
        "modality_heads.text.proj.0.weight": 1 + r(tw),
        "modality_heads.text.proj.0.bias": r(tw),
        "modality_heads.text.proj.1.weight": r(e, tw),
        "modality_postprocessors.text.1.log_logit_scale": torch.tensor(float(np.log(1 / 0.07))),
        # other modalities live in the same file and must be skipped
        "modality_preprocessors.audio.rgbt_stem.proj.weight": r(8, 1, 4, 4),
        "modality_trunks.audio.blocks.0.attn.bias_k": r(1, 1, 8),
        "modality_postprocessors.audio.1.log_logit_scale": torch.tensor(3.0),
    }
    for i in range(arch["layers"]):
        state.update(_block(f"modality_trunks.vision.blocks.{i}", w, g))
    for i in range(arch["text_layers"]):
        state.update(_block(f"modality_trunks.text.blocks.{i}", tw, g))
    return state


def decoder_state(arch: dict = TINY, seed: int = 1) -> dict[str, torch.Tensor]:
    """AnomalyGPT's pytorch_model.pt layout: image_decoder.fc.N plus parts the expert ignores."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(4):
        state[f"image_decoder.fc.{i}.weight"] = torch.randn(arch["decoder_dim"], arch["width"], generator=g) * 0.3
        state[f"image_decoder.fc.{i}.bias"] = torch.randn(arch["decoder_dim"], generator=g) * 0.1
    state["prompt_learner.base_prompts"] = torch.randn(9, 8, generator=g)
    state["llama_proj.weight"] = torch.randn(8, arch["embed_dim"], generator=g)
    state["llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"] = torch.zeros(2, 8)
    return state


# -- an independent functional ImageBind forward (from the structure of ImageBind's code) ---------
def _ln(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, x.shape[-1:], state[prefix + ".weight"], state[prefix + ".bias"], eps=1e-6)


def _blocks(x: torch.Tensor, state: dict, trunk: str, n: int, heads: int, mask: torch.Tensor | None) -> list[torch.Tensor]:
    """BlockWithMasking: x + attn(norm_1(x)); x + fc2(gelu(fc1(norm_2(x)))); sequence-first like ImageBind."""
    import torch.nn.functional as F

    outs = []
    x = x.transpose(0, 1)  # b l d -> l b d
    width = x.shape[-1]
    for i in range(n):
        p = f"{trunk}.blocks.{i}"
        h = _ln(x, state, p + ".norm_1")
        a, _ = F.multi_head_attention_forward(
            h, h, h, width, heads,
            state[p + ".attn.in_proj_weight"], state[p + ".attn.in_proj_bias"], None, None, False, 0.0,
            state[p + ".attn.out_proj.weight"], state[p + ".attn.out_proj.bias"],
            training=False, need_weights=False, attn_mask=mask,
        )
        x = x + a
        h = _ln(x, state, p + ".norm_2")
        x = x + F.linear(F.gelu(F.linear(h, state[p + ".mlp.fc1.weight"], state[p + ".mlp.fc1.bias"])),
                         state[p + ".mlp.fc2.weight"], state[p + ".mlp.fc2.bias"])
        outs.append(x.transpose(0, 1))
    return outs


def reference_vision(state: dict, image: torch.Tensor, arch: dict = TINY) -> tuple[list[torch.Tensor], torch.Tensor]:
    """All block outputs (B x (1+L) x W) and the head output (before normalisation) of ImageBind's vision path."""
    import torch.nn.functional as F

    video = image.unsqueeze(2).repeat(1, 1, 2, 1, 1)  # PadIm2Video(ntimes=2, "repeat")
    p = arch["patch_size"]
    x = F.conv3d(video, state["modality_preprocessors.vision.rgbt_stem.proj.1.weight"], stride=(2, p, p))
    x = x.flatten(2).transpose(1, 2)
    cls = state["modality_preprocessors.vision.cls_token"].expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + state["modality_preprocessors.vision.pos_embedding_helper.pos_embed"]
    x = _ln(x, state, "modality_trunks.vision.pre_transformer_layer.0")
    outs = _blocks(x, state, "modality_trunks.vision", arch["layers"], arch["heads"], None)
    head = _ln(outs[-1], state, "modality_heads.vision.0")[:, 0] @ state["modality_heads.vision.2.weight"].T
    return outs, head


def reference_text(state: dict, tokens: torch.Tensor, arch: dict = TINY) -> torch.Tensor:
    """ImageBind's text path: embeddings, causal blocks, EOS (argmax token) selection, LayerNorm, projection."""
    x = state["modality_preprocessors.text.token_embedding.weight"][tokens] + state["modality_preprocessors.text.pos_embed"]
    outs = _blocks(x, state, "modality_trunks.text", arch["text_layers"], arch["text_heads"],
                   state["modality_preprocessors.text.mask"])
    x = outs[-1][torch.arange(tokens.shape[0]), tokens.argmax(dim=-1)]
    x = _ln(x, state, "modality_heads.text.proj.0") @ state["modality_heads.text.proj.1.weight"].T
    return torch.nn.functional.normalize(x, dim=-1)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``imagebind_huge.pth`` and ``pytorch_model.pt`` of the tiny architecture, in the published layouts."""
    folder = tmp_path_factory.mktemp("anomalygpt_weights")
    paths = {"imagebind": folder / "imagebind_huge.pth", "decoder": folder / "pytorch_model.pt"}
    torch.save(imagebind_state(), paths["imagebind"])
    torch.save(decoder_state(), paths["decoder"])
    return paths


def tiny_config(weights: dict[str, Path], **extra: object) -> dict:  # noqa: D103
    return {
        "imagebind_weights": str(weights["imagebind"]),
        "decoder_weights": str(weights["decoder"]),
        "architecture": TINY,
        "class_name": "bottle",
        **extra,
    }


@pytest.fixture(scope="session")
def kit():  # noqa: ANN201 - a namespace of the helpers above (test modules cannot import conftest by name)
    """The helpers of this conftest: TINY, imagebind_state, decoder_state, reference_vision/text, tiny_config, brick_crops."""
    from types import SimpleNamespace

    return SimpleNamespace(
        TINY=TINY,
        imagebind_state=imagebind_state,
        decoder_state=decoder_state,
        reference_vision=reference_vision,
        reference_text=reference_text,
        tiny_config=tiny_config,
        brick_crops=brick_crops,
    )
