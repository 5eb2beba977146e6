"""The frozen language model: a transformers ``LlamaForCausalLM`` shaped by ``config.llm``.

Building (random or on the meta device), the check of a given LLM against the config,
and the rotary buffers, which a dtype cast or a meta build leaves wrong. Loading real
weights: :func:`myriad.lmm.smollm2.load_smollm2` (mini) or the Vicuna loader in
:mod:`myriad.lmm.checkpoints` (paper).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from myriad.lmm.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from myriad.lmm.config import MyriadConfig

__all__ = ["DTYPES", "build_language_model", "check_language_model", "llama_config", "materialise_rotary", "restore_float32_rotary"]

#: Storage dtypes by their config name (``llm_dtype``, ``vision_dtype``).
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def llama_config(config: "MyriadConfig") -> Any:
    """The transformers ``LlamaConfig`` of ``config.llm``."""
    from myriad.lmm._hf import llama

    LlamaConfig, _ = llama()
    s = config.llm
    return LlamaConfig(
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_kv_heads,
        vocab_size=s.vocab_size,
        max_position_embeddings=s.max_position_embeddings,
        rope_theta=s.rope_theta,
        rms_norm_eps=s.rms_norm_eps,
        tie_word_embeddings=s.tie_word_embeddings,
        bos_token_id=s.bos_token_id,
        eos_token_id=s.eos_token_id,
        pad_token_id=s.pad_token_id,
    )


def build_language_model(config: "MyriadConfig") -> nn.Module:
    """A randomly initialised (or meta) ``LlamaForCausalLM`` with ``config.llm`` dimensions."""
    from myriad.lmm._hf import llama

    _, LlamaForCausalLM = llama()
    return LlamaForCausalLM(llama_config(config))


def check_language_model(config: "MyriadConfig", lm: nn.Module) -> None:
    """Refuse a given language model whose width, depth or vocabulary differ from ``config.llm``."""
    s = config.llm
    c = getattr(lm, "config", None)
    got = {
        "hidden_size": getattr(c, "hidden_size", None),
        "num_layers": getattr(c, "num_hidden_layers", None),
        "vocab_size": getattr(c, "vocab_size", None),
    }
    want = {"hidden_size": s.hidden_size, "num_layers": s.num_layers, "vocab_size": s.vocab_size}
    if got != want:
        raise ConfigError(f"language model does not match config.llm ({s.name}): expected {want}, got {got}")


def _rotary(language_model: nn.Module) -> tuple[Any, Any, list[torch.Tensor]]:
    inner = getattr(language_model, "model", None)
    rotary = getattr(inner, "rotary_emb", None)
    return inner, rotary, list(rotary.buffers()) if rotary is not None else []


def restore_float32_rotary(language_model: nn.Module) -> None:
    """``.to(float16)`` also rounds the rotary ``inv_freq`` buffers; rebuild them in float32 (as from_pretrained keeps them)."""
    inner, rotary, buffers = _rotary(language_model)
    if not buffers or buffers[0].is_meta or buffers[0].dtype == torch.float32:
        return
    with torch.device(buffers[0].device):
        inner.rotary_emb = type(rotary)(config=language_model.config)


def materialise_rotary(language_model: nn.Module) -> None:
    """Rotary buffers left on the meta device (non-persistent: in no checkpoint) rebuilt on the CPU from the config."""
    inner, rotary, buffers = _rotary(language_model)
    if any(b.is_meta for b in buffers):
        with torch.device("cpu"):
            inner.rotary_emb = type(rotary)(config=language_model.config)
