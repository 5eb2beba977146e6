"""Key maps: the published checkpoints' tensor names renamed onto the parts of a Myriad model.

Pure functions (``map_*``) from a state dict to a :class:`MappedState`; they need no
model and no torch beyond the tensors given (the EVA/BLIP-2 ``q_bias``/``v_bias`` pair
becomes one ``qkv.bias``). The key tables are in ``docs/paper-weights.md`` and
``myriad/lmm/README_KEYS.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from myriad.errors import WeightsError

__all__ = [
    "MYRIAD_LORRA",
    "MYRIAD_MODULES",
    "MappedState",
    "map_eva_vit_keys",
    "map_hf_blip2_keys",
    "map_lavis_blip2_keys",
    "map_lavis_qformer_keys",
    "map_minigpt4_keys",
    "map_myriad_keys",
    "map_vicuna_keys",
]


@dataclass
class MappedState:
    """Tensors renamed onto model parts, with the original key of each (for messages) and the unused keys.

    ``parts[part][key]``: ``key`` is relative to the part (``Blip2VisionModel`` keys for
    ``backbone``, ``Blip2QFormerModel`` keys for ``qformer``, ``"query_tokens"`` for the
    query tokens, ``LlamaForCausalLM`` keys for ``language_model``, ...).
    """

    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, dict[str, str]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, part: str, key: str, tensor: Any, source: str) -> None:
        self.parts.setdefault(part, {})[key] = tensor
        self.sources.setdefault(part, {})[key] = source

    def merge(self, other: "MappedState") -> "MappedState":
        for part, tensors in other.parts.items():
            for key, tensor in tensors.items():
                self.add(part, key, tensor, other.sources[part][key])
        self.unexpected += other.unexpected
        self.notes += other.notes
        return self

    def __len__(self) -> int:
        return sum(len(t) for t in self.parts.values())


_EVA_TOP = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
}
_EVA_BLOCK_RENAMES = {
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "attn.qkv.weight": "self_attn.qkv.weight",
    "attn.qkv.bias": "self_attn.qkv.bias",  # not in EVA ViT-g (q_bias/v_bias instead); other EVA exports
    "attn.proj.weight": "self_attn.projection.weight",
    "attn.proj.bias": "self_attn.projection.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
#: EVA weights that change the computation and that ``Blip2VisionModel`` has no place for.
_EVA_UNSUPPORTED = ("gamma_1", "gamma_2", "relative_position_bias_table", "rel_pos_bias.")
_EVA_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _qkv_bias(q_bias: Any, v_bias: Any) -> Any:
    """BLIP-2's attention bias: ``cat(q_bias, zeros (no key bias), v_bias)``."""
    import torch

    return torch.cat([q_bias, torch.zeros_like(v_bias), v_bias])


def map_eva_vit_keys(
    state: Mapping[str, Any], num_layers: int | None = None, source: str = "<state dict>"
) -> MappedState:
    """LAVIS ``eva_vit_g.pth`` keys -> ``Blip2VisionModel`` keys (part ``backbone``).

    ``visual_encoder.`` prefixes (a BLIP-2 model's state dict) are stripped. Blocks with
    index >= ``num_layers`` are not used (BLIP-2 builds 39 of EVA ViT-g's 40 blocks) and
    are reported as unexpected. ``q_bias`` and ``v_bias`` become one ``qkv.bias`` with a
    zero key bias, exactly as the original attention computes it.
    """
    out = MappedState()
    biases: dict[int, dict[str, tuple[str, Any]]] = {}
    dropped: set[int] = set()
    for full_key, tensor in state.items():
        key = full_key[len("visual_encoder.") :] if full_key.startswith("visual_encoder.") else full_key
        if any(marker in key for marker in _EVA_UNSUPPORTED):
            raise WeightsError(
                f"{source}: {full_key!r} (layer scale / relative position bias) is not part of the BLIP-2 EVA ViT-g "
                "that Blip2VisionModel implements; this is a different EVA variant"
            )
        if key in _EVA_TOP:
            out.add("backbone", _EVA_TOP[key], tensor, full_key)
            continue
        match = _EVA_BLOCK.match(key)
        if match is None:
            out.unexpected.append(full_key)
            continue
        index, rest = int(match.group(1)), match.group(2)
        if num_layers is not None and index >= num_layers:
            dropped.add(index)
            out.unexpected.append(full_key)
            continue
        if rest in ("attn.q_bias", "attn.v_bias"):
            biases.setdefault(index, {})[rest[5]] = (full_key, tensor)
        elif rest in _EVA_BLOCK_RENAMES:
            out.add("backbone", f"encoder.layers.{index}.{_EVA_BLOCK_RENAMES[rest]}", tensor, full_key)
        else:
            out.unexpected.append(full_key)
    for index, pair in sorted(biases.items()):
        if set(pair) != {"q", "v"}:
            have = next(iter(pair.values()))[0]
            raise WeightsError(f"{source}: {have!r} has no partner (EVA attention needs both q_bias and v_bias)")
        (q_key, q), (v_key, v) = pair["q"], pair["v"]
        if tuple(q.shape) != tuple(v.shape):
            raise WeightsError(f"{source}: {q_key!r} {tuple(q.shape)} and {v_key!r} {tuple(v.shape)} differ in shape")
        out.add("backbone", f"encoder.layers.{index}.self_attn.qkv.bias", _qkv_bias(q, v), f"{q_key} + zeros + {v_key}")
    if dropped:
        out.notes.append(
            f"{source}: block(s) {sorted(dropped)} not used (the model has {num_layers}; BLIP-2 drops EVA ViT-g's 40th block)"
        )
    return out


_QF_ATTENTION = re.compile(r"^encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(.+)$")
_QF_KEEP = re.compile(r"^encoder\.layer\.(\d+)\.(attention\.output|crossattention\.output|intermediate_query|output_query)\.(.+)$")


def map_lavis_qformer_keys(state: Mapping[str, Any], prefix: str = "Qformer.") -> MappedState:
    """LAVIS ``Qformer.bert.*`` keys -> ``Blip2QFormerModel`` keys (part ``qformer``).

    ``attention.self`` / ``crossattention.self`` become ``attention.attention`` /
    ``crossattention.attention``; ``embeddings.LayerNorm`` becomes ``layernorm``. The
    text-only parts (word/position embeddings, ``position_ids``, the text FFN
    ``intermediate``/``output`` of every layer, the ``cls`` head, a pooler) are reported
    as unexpected. Keys outside ``prefix`` are ignored.
    """
    out = MappedState()
    bert = prefix + "bert."
    for full_key, tensor in state.items():
        if not full_key.startswith(prefix):
            continue
        if not full_key.startswith(bert):
            out.unexpected.append(full_key)  # Qformer.cls.* (MLM head)
            continue
        key = full_key[len(bert) :]
        if key.startswith("embeddings.LayerNorm."):
            out.add("qformer", "layernorm." + key[len("embeddings.LayerNorm.") :], tensor, full_key)
        elif (m := _QF_ATTENTION.match(key)) is not None:
            out.add("qformer", f"encoder.layer.{m.group(1)}.{m.group(2)}.attention.{m.group(3)}", tensor, full_key)
        elif _QF_KEEP.match(key) is not None:
            out.add("qformer", key, tensor, full_key)
        else:
            out.unexpected.append(full_key)  # embeddings.word/position_*, position_ids, text FFN, pooler
    return out


def map_lavis_blip2_keys(
    state: Mapping[str, Any], num_layers: int | None = None, include_visual_encoder: bool = True, source: str = "<state dict>"
) -> MappedState:
    """A LAVIS BLIP-2 state dict (``blip2_pretrained_*.pth``'s ``"model"``) -> qformer, query_tokens, ln_vision [, backbone].

    ``ln_vision.*`` -> part ``ln_vision``; ``query_tokens`` -> part ``query_tokens``;
    ``Qformer.*`` -> :func:`map_lavis_qformer_keys`; ``visual_encoder.*`` ->
    :func:`map_eva_vit_keys` when ``include_visual_encoder`` (the original loads this
    file non-strictly over the whole model, so such keys would replace the EVA weights).
    Everything else (``t5_proj``, ``opt_proj``, LLM weights) is unexpected.
    """
    out = map_lavis_qformer_keys(state)
    vision = {k: v for k, v in state.items() if k.startswith("visual_encoder.")}
    if vision:
        if include_visual_encoder:
            out.merge(map_eva_vit_keys(vision, num_layers=num_layers, source=source))
        else:
            out.unexpected += list(vision)
            out.notes.append(f"{source}: visual_encoder.* present but not loaded (include_visual_encoder=False)")
    for key, tensor in state.items():
        if key.startswith(("Qformer.", "visual_encoder.")):
            continue
        if key == "query_tokens":
            out.add("query_tokens", "query_tokens", tensor, key)
        elif key in ("ln_vision.weight", "ln_vision.bias"):
            out.add("ln_vision", key[len("ln_vision.") :], tensor, key)
        else:
            out.unexpected.append(key)
    return out


def map_hf_blip2_keys(state: Mapping[str, Any], source: str = "<state dict>") -> MappedState:
    """Hugging Face BLIP-2 keys -> backbone, ln_vision, qformer, query_tokens.

    ``vision_model.post_layernorm`` is BLIP-2's ``ln_vision`` (Myriad applies it after
    LoRRA, so it lives in part ``ln_vision``). Early conversions stored ``self_attn.q_bias``
    / ``v_bias``; they are assembled into ``qkv.bias`` like the EVA file. ``qformer.embeddings.*``,
    ``language_projection.*`` and ``language_model.*`` are unexpected (BLIP-2's own projection
    is not MiniGPT-4's; Myriad's comes from :func:`load_minigpt4_projection`).
    """
    out = MappedState()
    biases: dict[str, dict[str, tuple[str, Any]]] = {}
    for key, tensor in state.items():
        if key.startswith("vision_model."):
            rest = key[len("vision_model.") :]
            if rest.startswith("post_layernorm."):
                out.add("ln_vision", rest[len("post_layernorm.") :], tensor, key)
            elif rest.endswith(("self_attn.q_bias", "self_attn.v_bias")):
                stem = rest[: -len("q_bias")]
                biases.setdefault(stem, {})[rest[-6]] = (key, tensor)
            elif rest.startswith(("embeddings.", "encoder.")):
                out.add("backbone", rest, tensor, key)
            else:
                out.unexpected.append(key)
        elif key.startswith("qformer."):
            rest = key[len("qformer.") :]
            if rest.startswith("embeddings."):
                out.unexpected.append(key)
            else:
                out.add("qformer", rest, tensor, key)
        elif key == "query_tokens":
            out.add("query_tokens", "query_tokens", tensor, key)
        else:
            out.unexpected.append(key)
    for stem, pair in sorted(biases.items()):
        if set(pair) != {"q", "v"}:
            raise WeightsError(f"{source}: {next(iter(pair.values()))[0]!r} has no q_bias/v_bias partner")
        (q_key, q), (v_key, v) = pair["q"], pair["v"]
        out.add("backbone", stem + "qkv.bias", _qkv_bias(q, v), f"{q_key} + zeros + {v_key}")
    return out


def map_minigpt4_keys(state: Mapping[str, Any]) -> MappedState:
    """MiniGPT-4 ``llama_proj.weight`` / ``.bias`` -> part ``language_projection``; all else unexpected."""
    out = MappedState()
    for key, tensor in state.items():
        if key in ("llama_proj.weight", "llama_proj.bias"):
            out.add("language_projection", key[len("llama_proj.") :], tensor, key)
        else:
            out.unexpected.append(key)
    return out


def map_vicuna_keys(state: Mapping[str, Any]) -> MappedState:
    """``LlamaForCausalLM`` keys -> part ``language_model`` (same names); rotary ``inv_freq`` buffers are unexpected."""
    out = MappedState()
    for key, tensor in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            out.unexpected.append(key)  # recomputed from the config, saved by old transformers versions
        else:
            out.add("language_model", key, tensor, key)
    return out


#: The authors' module names (``minigpt4/models/myriad.py``) -> our parts.
MYRIAD_MODULES = {"expert_adaptor.": "lorra", "VEInstructor.": "vpg", "VETokenizer.": "tpg"}
MYRIAD_LORRA = {"conv1.weight": "down.weight", "conv2.weight": "up.weight"}
_MYRIAD_NET = re.compile(r"^meta_net\.(\d+)\.(weight|bias)$")


def map_myriad_keys(state: Mapping[str, Any], source: str = "<state dict>") -> MappedState:
    """The authors' Myriad keys -> parts ``lorra``, ``vpg``, ``tpg``.

    ``expert_adaptor.conv1.weight`` (r x 1408, a bias-free ``nn.Linear`` despite the name)
    -> ``lorra.down.weight``; ``conv2.weight`` (1408 x r) -> ``lorra.up.weight`` (1x1-conv
    shaped ``r x d x 1 x 1`` tensors are squeezed); ``VEInstructor.meta_net.{i}`` ->
    ``vpg.net.{i}``; ``VETokenizer.meta_net.{i}`` -> ``tpg.net.{i}``;
    ``VETokenizer.base_prompts`` -> ``tpg.base_prompts``. A ``module.`` prefix (DDP) is
    stripped. All other keys (buffers of frozen parts, LLM LoRA, ...) are unexpected.
    """
    out = MappedState()
    lora_llm = 0
    for full_key, tensor in state.items():
        key = full_key[len("module.") :] if full_key.startswith("module.") else full_key
        prefix = next((p for p in MYRIAD_MODULES if key.startswith(p)), None)
        if prefix is None:
            lora_llm += "lora_" in key
            out.unexpected.append(full_key)
            continue
        part, rest = MYRIAD_MODULES[prefix], key[len(prefix) :]
        if part == "lorra" and rest in MYRIAD_LORRA:
            if tensor.ndim == 4 and tuple(tensor.shape[2:]) == (1, 1):
                tensor = tensor[:, :, 0, 0]
                out.notes.append(f"{source}: {full_key!r} is 1x1-conv shaped; squeezed to {tuple(tensor.shape)}")
            out.add(part, MYRIAD_LORRA[rest], tensor, full_key)
        elif part in ("vpg", "tpg") and (m := _MYRIAD_NET.match(rest)) is not None:
            out.add(part, f"net.{m.group(1)}.{m.group(2)}", tensor, full_key)
        elif part == "tpg" and rest == "base_prompts":
            out.add(part, "base_prompts", tensor, full_key)
        else:
            out.unexpected.append(full_key)
    if lora_llm:
        out.notes.append(
            f"{source}: {lora_llm} LoRA tensor(s) of the LLM (use_lora=True in the original) are not loaded; "
            "this model holds no LLM LoRA"
        )
    return out
