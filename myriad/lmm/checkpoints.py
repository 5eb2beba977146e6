"""Loaders for the published weights the ``paper`` preset uses, and the authors' checkpoint layout.

Every loader reads local files only (nothing is downloaded, nothing unpickled beyond
tensors: ``torch.load(..., weights_only=True)`` or safetensors), renames the original
keys onto the parts of a :class:`~myriad.lmm.model.MyriadLMM`, checks every shape and
the completeness of every part it fills, applies the tensors with
``MyriadLMM.load_part`` (which casts them to the part's dtype and materialises a model
built on the meta device), and returns a :class:`LoadReport` (loaded, missing and
unexpected keys). A file that does not fit is refused with a :class:`WeightsError`
naming the file, the key, and the expected and found shapes.

=====================================  =====================================================
file (layout)                          parts filled
=====================================  =====================================================
``eva_vit_g.pth`` (LAVIS)              ``backbone`` (the 40th block is dropped)
``blip2_pretrained_flant5xxl.pth``     ``qformer``, ``query_tokens``, ``ln_vision``
(LAVIS, under ``"model"``)             (and ``backbone`` if it holds ``visual_encoder.*``)
Hugging Face BLIP-2 directory          ``backbone``, ``ln_vision`` (``post_layernorm``),
                                       ``qformer``, ``query_tokens``
``pretrained_minigpt4_7b.pth``         ``language_projection`` (``llama_proj``)
Hugging Face Vicuna directory          ``language_model``
the authors' Myriad checkpoint         ``lorra``, ``vpg``, ``tpg``
=====================================  =====================================================

The pure key-mapping functions (``map_*``) take a state dict and return a
:class:`MappedState`; they are usable (and tested) without a model. See
``docs/paper-weights.md`` for where the files come from and the full key tables.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from myriad.errors import WeightsError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from myriad.lmm.model import MyriadLMM

__all__ = [
    "LoadReport",
    "MappedState",
    "export_myriad_checkpoint",
    "load_eva_vit",
    "load_hf_blip2",
    "load_lavis_blip2",
    "load_minigpt4_projection",
    "load_myriad_checkpoint",
    "load_paper_weights",
    "load_vicuna",
    "map_eva_vit_keys",
    "map_hf_blip2_keys",
    "map_lavis_blip2_keys",
    "map_lavis_qformer_keys",
    "map_minigpt4_keys",
    "map_myriad_keys",
    "map_vicuna_keys",
    "myriad_state_dict",
    "read_state_dict",
]


# ----------------------------------------------------------------------------- results
@dataclass
class LoadReport:
    """What one loader did: model keys written, model keys not provided, file keys not used."""

    source: str
    layout: str
    parts: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every tensor of the parts this loader fills came from the file."""
        return not self.missing

    def summary(self, limit: int = 5) -> str:
        """A few readable lines (long key lists are cut to ``limit`` examples)."""

        def cut(keys: list[str]) -> str:
            more = f", ... (+{len(keys) - limit})" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        lines = [f"{self.layout} <- {self.source}: {len(self.loaded)} tensor(s) into {', '.join(self.parts) or 'nothing'}"]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): {cut(self.missing)}")
        if self.unexpected:
            lines.append(f"  unused file keys ({len(self.unexpected)}): {cut(self.unexpected)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


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


# ----------------------------------------------------------------------------- reading files
_WRAPPERS = ("model", "state_dict", "module")


def read_state_dict(path: str | Path) -> dict[str, "torch.Tensor"]:
    """The tensors of a ``.pth``/``.pt``/``.bin`` (weights only) or ``.safetensors`` file, unwrapped from ``"model"``."""
    from myriad.io import load_torch_checkpoint

    return load_torch_checkpoint(path, mmap=True, unwrap=_WRAPPERS, tensors_only=True)


def _hf_weight_files(directory: Path) -> list[Path]:
    """The weight files of a Hugging Face model directory (safetensors preferred, sharded or not)."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise WeightsError(f"{index}: not a readable weight index ({exc})") from exc
            files = [directory / name for name in dict.fromkeys(weight_map.values())]
            absent = [str(f) for f in files if not f.is_file()]
            if absent:
                raise WeightsError(f"{index}: lists shard(s) that are not there: {absent[:3]}")
            return files
        if (directory / single).is_file():
            return [directory / single]
    raise WeightsError(
        f"{directory}: no weights found (looked for model.safetensors[.index.json] and pytorch_model.bin[.index.json])"
    )


def _iter_hf_shards(directory: Path, wanted: Callable[[str], bool]) -> Iterator[tuple[Path, dict[str, Any], list[str]]]:
    """Per shard: (file, tensors whose key is ``wanted``, keys not read). Safetensors are read lazily."""
    for file in _hf_weight_files(directory):
        if file.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(file), framework="pt", device="cpu") as handle:
                    keys = list(handle.keys())
                    tensors = {k: handle.get_tensor(k) for k in keys if wanted(k)}
            except (SafetensorError, OSError, ValueError) as exc:
                raise WeightsError(f"{file}: not a readable safetensors file: {exc}") from exc
        else:
            state = read_state_dict(file)
            keys = list(state)
            tensors = {k: v for k, v in state.items() if wanted(k)}
        yield file, tensors, [k for k in keys if not wanted(k)]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WeightsError(f"{path}: not found (a Hugging Face model directory needs its config.json)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return data


# ----------------------------------------------------------------------------- key mappings
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
_EVA_IGNORED_TOP = ("norm.", "fc_norm.", "head.", "lm_head.", "mask_token")


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
_QF_TEXT_FFN = re.compile(r"^encoder\.layer\.\d+\.(intermediate|output)\.")


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
_MYRIAD_MODULES = {"expert_adaptor.": "lorra", "VEInstructor.": "vpg", "VETokenizer.": "tpg"}
_MYRIAD_LORRA = {"conv1.weight": "down.weight", "conv2.weight": "up.weight"}
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
        prefix = next((p for p in _MYRIAD_MODULES if key.startswith(p)), None)
        if prefix is None:
            lora_llm += "lora_" in key
            out.unexpected.append(full_key)
            continue
        part, rest = _MYRIAD_MODULES[prefix], key[len(prefix) :]
        if part == "lorra" and rest in _MYRIAD_LORRA:
            if tensor.ndim == 4 and tuple(tensor.shape[2:]) == (1, 1):
                tensor = tensor[:, :, 0, 0]
                out.notes.append(f"{source}: {full_key!r} is 1x1-conv shaped; squeezed to {tuple(tensor.shape)}")
            out.add(part, _MYRIAD_LORRA[rest], tensor, full_key)
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


# ----------------------------------------------------------------------------- applying to a model
def _full_key(part: str, key: str) -> str:
    from myriad.lmm.model import PART_PREFIXES

    prefix = PART_PREFIXES.get(part, part + ".")
    return prefix if part == "query_tokens" else prefix + key


def _expected_shapes(part_obj: Any) -> dict[str, tuple[int, ...]]:
    import torch

    if isinstance(part_obj, torch.nn.Parameter):
        return {"query_tokens": tuple(part_obj.shape)}
    return {k: tuple(v.shape) for k, v in part_obj.state_dict().items()}


def _part_prefix(expected: Mapping[str, Any], probe: str) -> str:
    """The prefix the part puts before the mapper's keys (``vision_model.`` for the EVA backbone)."""
    for key in expected:
        if key.endswith(probe):
            return key[: len(key) - len(probe)]
    return ""


_HINTS = {
    "backbone": "vision.hidden_size / num_heads / intermediate_size / patch_size / image_size",
    "qformer": "qformer.* and vision.hidden_size (the cross-attention width)",
    "query_tokens": "qformer.num_query_tokens / qformer.hidden_size",
    "ln_vision": "vision.hidden_size",
    "language_projection": "qformer.hidden_size / llm.hidden_size",
    "language_model": "llm.*",
    "lorra": "lorra.rank / vision.hidden_size",
    "vpg": "prompt_generators.trunk_channels / qformer.hidden_size",
    "tpg": "prompt_generators.* / llm.hidden_size",
}


def _apply(
    model: "MyriadLMM",
    report: LoadReport,
    mapped: MappedState,
    part: str,
    file: Path | str,
    *,
    require_all: bool,
    unknown: str = "raise",
    probe: str | None = None,
) -> list[str]:
    """Check ``mapped.parts[part]`` against the model's part, load it, record it; returns the part keys still missing."""
    tensors = mapped.parts.get(part, {})
    sources = mapped.sources.get(part, {})
    part_obj = model.parts().get(part)
    if part_obj is None:
        if tensors:
            report.unexpected += list(sources.values())
            report.notes.append(f"part {part!r} is switched off in this config; its {len(tensors)} tensor(s) are not loaded")
        return []
    expected = _expected_shapes(part_obj)
    prefix = _part_prefix(expected, probe) if probe else ""
    state: dict[str, Any] = {}
    for key, tensor in tensors.items():
        target = prefix + key
        if target not in expected:
            if unknown == "raise":
                raise WeightsError(
                    f"{file}: {sources[key]!r} maps to {_full_key(part, target)!r}, which this model does not have; "
                    f"the checkpoint's structure differs from the config (check {_HINTS.get(part, part)})"
                )
            report.unexpected.append(sources[key])
            continue
        if tuple(tensor.shape) != expected[target]:
            raise WeightsError(
                f"{file}: {sources[key]!r} has shape {tuple(tensor.shape)} but {_full_key(part, target)!r} "
                f"expects {expected[target]} (check {_HINTS.get(part, part)})"
            )
        state[target] = tensor
    missing = [k for k in expected if k not in state]
    if missing and require_all:
        names = [_full_key(part, k) for k in missing]
        raise WeightsError(
            f"{file}: {len(missing)} tensor(s) of part {part!r} are not in the checkpoint, e.g. {names[:4]}"
        )
    if state:
        model.load_part(part, state["query_tokens"] if part == "query_tokens" else state, strict=False)
        if part not in report.parts:
            report.parts.append(part)
        report.loaded += [_full_key(part, k) for k in state]
    return missing


def _not_a(file: Path | str, what: str, examples: str, state: Mapping[str, Any]) -> WeightsError:
    found = ", ".join(repr(k) for k in list(state)[:5]) or "none"
    return WeightsError(
        f"{file}: does not look like {what}: none of its {len(state)} tensor(s) has a known key "
        f"(expected keys like {examples}; found {found})"
    )


def _refuse_if_empty(mapped: MappedState, file: Path | str, what: str, examples: str, state: Mapping[str, Any]) -> None:
    if len(mapped) == 0:
        raise _not_a(file, what, examples, state)


def _require_eva_backbone(model: "MyriadLMM", what: str) -> None:
    kind = model.config.vision.kind
    if kind != "eva_vit":
        raise WeightsError(f"{what} needs the EVA ViT backbone (vision.kind='eva_vit'); this model has {kind!r}")


# ----------------------------------------------------------------------------- loaders
def load_eva_vit(model: "MyriadLMM", path: str | Path) -> LoadReport:
    """LAVIS ``eva_vit_g.pth`` -> the EVA ViT-g backbone (first ``vision.num_layers`` blocks)."""
    path = Path(path)
    _require_eva_backbone(model, "eva_vit_g.pth")
    state = read_state_dict(path)
    mapped = map_eva_vit_keys(state, num_layers=model.config.vision.num_layers, source=str(path))
    _refuse_if_empty(mapped, path, "an EVA ViT checkpoint", "'cls_token', 'pos_embed', 'blocks.0.attn.qkv.weight'", state)
    report = LoadReport(str(path), "eva_vit", unexpected=list(mapped.unexpected), notes=list(mapped.notes))
    report.missing = [
        _full_key("backbone", k)
        for k in _apply(model, report, mapped, "backbone", path, require_all=True, probe="embeddings.class_embedding")
    ]
    return report


def load_lavis_blip2(model: "MyriadLMM", path: str | Path, include_visual_encoder: bool = True) -> LoadReport:
    """LAVIS ``blip2_pretrained_flant5xxl.pth`` -> Q-Former, query tokens, ln_vision (and ViT if the file has one)."""
    path = Path(path)
    state = read_state_dict(path)
    mapped = map_lavis_blip2_keys(
        state, num_layers=model.config.vision.num_layers, include_visual_encoder=include_visual_encoder, source=str(path)
    )
    if not any(p in mapped.parts for p in ("qformer", "query_tokens")):
        raise _not_a(path, "a LAVIS BLIP-2 checkpoint", "'Qformer.bert.encoder.layer.0...', 'query_tokens'", state)
    report = LoadReport(str(path), "lavis_blip2", unexpected=list(mapped.unexpected), notes=list(mapped.notes))
    if "backbone" in mapped.parts:
        _require_eva_backbone(model, "the visual_encoder of a LAVIS BLIP-2 checkpoint")
        _apply(model, report, mapped, "backbone", path, require_all=True, probe="embeddings.class_embedding")
        report.notes.append("visual_encoder.* loaded over the backbone (as the original's non-strict load does)")
    for part in ("qformer", "query_tokens", "ln_vision"):
        _apply(model, report, mapped, part, path, require_all=True)
    return report


def load_hf_blip2(model: "MyriadLMM", directory: str | Path, include_vision: bool = True) -> LoadReport:
    """A Hugging Face BLIP-2 directory -> backbone + ln_vision (``post_layernorm``), Q-Former, query tokens.

    Only ``vision_model.*``, ``qformer.*`` and ``query_tokens`` are read (safetensors
    shards lazily); ``language_model.*`` and ``language_projection.*`` are reported as
    unexpected without being loaded into memory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise WeightsError(f"{directory}: BLIP-2 directory not found")
    config = _read_json(directory / "config.json")
    model_type = str(config.get("model_type", ""))
    if model_type and model_type.replace("_", "-") not in ("blip-2", "instructblip"):
        raise WeightsError(f"{directory / 'config.json'}: model_type {model_type!r} is not a BLIP-2 model")
    _check_hf_blip2_config(model, config, directory / "config.json")
    if include_vision:
        _require_eva_backbone(model, "a BLIP-2 vision_model")

    def wanted(key: str) -> bool:
        if key.startswith("vision_model."):
            return include_vision
        return key.startswith("qformer.") or key == "query_tokens"

    mapped = MappedState()
    skipped: list[str] = []
    for file, tensors, not_read in _iter_hf_shards(directory, wanted):
        mapped.merge(map_hf_blip2_keys(tensors, source=str(file)))
        skipped += not_read
    report = LoadReport(str(directory), "hf_blip2", unexpected=mapped.unexpected + skipped, notes=list(mapped.notes))
    if not any(p in mapped.parts for p in ("qformer", "query_tokens")):
        raise WeightsError(f"{directory}: no qformer.* / query_tokens tensors; not a BLIP-2 checkpoint")
    if skipped:
        report.notes.append(f"{len(skipped)} tensor(s) not read (language model / projection / excluded parts)")
    if include_vision:
        _apply(model, report, mapped, "backbone", directory, require_all=True, probe="embeddings.class_embedding")
        _apply(model, report, mapped, "ln_vision", directory, require_all=True)
    for part in ("qformer", "query_tokens"):
        _apply(model, report, mapped, part, directory, require_all=True)
    return report


def _check_hf_blip2_config(model: "MyriadLMM", config: Mapping[str, Any], path: Path) -> None:
    c = model.config
    checks = [
        ("num_query_tokens", config.get("num_query_tokens"), c.qformer.num_query_tokens),
        ("vision_config.hidden_size", (config.get("vision_config") or {}).get("hidden_size"), c.vision.hidden_size),
        ("qformer_config.hidden_size", (config.get("qformer_config") or {}).get("hidden_size"), c.qformer.hidden_size),
        ("qformer_config.num_hidden_layers", (config.get("qformer_config") or {}).get("num_hidden_layers"), c.qformer.num_layers),
    ]
    bad = [f"{name}: file {got}, model {want}" for name, got, want in checks if got is not None and got != want]
    if bad:
        raise WeightsError(f"{path}: BLIP-2 config does not match the Myriad config ({'; '.join(bad)})")


def load_minigpt4_projection(model: "MyriadLMM", path: str | Path) -> LoadReport:
    """MiniGPT-4 ``pretrained_minigpt4*.pth`` -> ``language_projection`` (``llama_proj``, 768 -> 4096)."""
    path = Path(path)
    state = read_state_dict(path)
    mapped = map_minigpt4_keys(state)
    _refuse_if_empty(mapped, path, "a MiniGPT-4 checkpoint", "'llama_proj.weight', 'llama_proj.bias'", state)
    report = LoadReport(str(path), "minigpt4", unexpected=list(mapped.unexpected), notes=list(mapped.notes))
    _apply(model, report, mapped, "language_projection", path, require_all=True)
    return report


_LLAMA_CONFIG_FIELDS = (
    ("hidden_size", "hidden_size"),
    ("num_hidden_layers", "num_layers"),
    ("num_attention_heads", "num_heads"),
    ("intermediate_size", "intermediate_size"),
    ("vocab_size", "vocab_size"),
)


def load_vicuna(model: "MyriadLMM", directory: str | Path) -> LoadReport:
    """A Hugging Face LLaMA/Vicuna directory -> ``language_model``, shard by shard (config dims checked first)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise WeightsError(f"{directory}: Vicuna directory not found")
    config_path = directory / "config.json"
    config = _read_json(config_path)
    llm = model.config.llm
    archs = config.get("architectures") or []
    if config.get("model_type") not in (None, "llama") and not any("Llama" in a for a in archs):
        raise WeightsError(f"{config_path}: model_type {config.get('model_type')!r} is not a LLaMA model")
    fields = list(_LLAMA_CONFIG_FIELDS) + [("num_key_value_heads", "num_kv_heads")]
    file_values = dict(config)
    file_values.setdefault("num_key_value_heads", config.get("num_attention_heads"))
    bad = {
        ours: (name, file_values[name])
        for name, ours in fields
        if file_values.get(name) is not None and file_values[name] != getattr(llm, ours)
    }
    if bad:
        details = "; ".join(f"{name}: file {value}, model {getattr(llm, ours)}" for ours, (name, value) in bad.items())
        fix = ", ".join(f"{ours!r}: {value}" for ours, (name, value) in bad.items())
        raise WeightsError(
            f"{config_path}: the LLM does not match config.llm ({details}); "
            f"build the model with paper_config(llm={{{fix}}}) to use this checkpoint"
        )
    report = LoadReport(str(directory), "vicuna")
    provided: set[str] = set()
    for file, tensors, _ in _iter_hf_shards(directory, lambda key: True):
        mapped = map_vicuna_keys(tensors)
        report.unexpected += mapped.unexpected
        _apply(model, report, mapped, "language_model", file, require_all=False)
        provided.update(mapped.parts.get("language_model", {}))
        del tensors, mapped
    expected = _expected_shapes(model.parts()["language_model"])
    missing = [k for k in expected if k not in provided]
    if llm.tie_word_embeddings and "lm_head.weight" in missing:
        missing.remove("lm_head.weight")
        report.notes.append("lm_head.weight is tied to the input embeddings (call model.finalize())")
    if missing:
        raise WeightsError(
            f"{directory}: {len(missing)} tensor(s) of the language model are not in any shard, "
            f"e.g. {[_full_key('language_model', k) for k in missing[:4]]}"
        )
    if any(k.endswith("rotary_emb.inv_freq") for k in report.unexpected):
        report.notes.append("rotary inv_freq buffers in the file are recomputed from the config, not loaded")
    return report


def load_myriad_checkpoint(model: "MyriadLMM", path: str | Path, strict: bool = False) -> LoadReport:
    """The authors' Myriad checkpoint (``{"model": {...}, "optimizer": ...}``) -> LoRRA, VPG, TPG.

    The original loads it non-strictly: keys of frozen parts' buffers, the optimizer and
    so on are reported as unexpected, and parts the file lacks are reported as missing
    (``strict=True`` refuses them). Wrong shapes are always refused, and so is a file
    with none of the authors' keys.
    """
    path = Path(path)
    state = read_state_dict(path)
    mapped = map_myriad_keys(state, source=str(path))
    _refuse_if_empty(
        mapped, path, "a Myriad checkpoint", "'expert_adaptor.conv1.weight', 'VEInstructor.meta_net.0.weight'", state
    )
    report = LoadReport(str(path), "myriad", unexpected=list(mapped.unexpected), notes=list(mapped.notes))
    for part in ("lorra", "vpg", "tpg"):
        if model.parts().get(part) is None:
            _apply(model, report, mapped, part, path, require_all=False)  # records the unused tensors
            continue
        missing = _apply(model, report, mapped, part, path, require_all=strict, unknown="report")
        report.missing += [_full_key(part, k) for k in missing]
    return report


# ----------------------------------------------------------------------------- export
_OUR_LORRA = {v: k for k, v in _MYRIAD_LORRA.items()}
_OUR_MODULES = {v: k for k, v in _MYRIAD_MODULES.items()}


def myriad_state_dict(model: "MyriadLMM") -> dict[str, "torch.Tensor"]:
    """Our LoRRA / VPG / TPG tensors under the authors' key names (CPU, contiguous copies)."""
    out: dict[str, Any] = {}
    for part in ("lorra", "vpg", "tpg"):
        module = model.parts().get(part)
        if module is None:
            continue
        for key, tensor in module.state_dict().items():
            if tensor.is_meta:
                raise WeightsError(f"part {part!r} has no weights yet (meta device); load or init it before exporting")
            if part == "lorra":
                name = _OUR_LORRA[key]
            elif key.startswith("net."):
                name = "meta_net." + key[len("net.") :]
            else:
                name = key
            out[_OUR_MODULES[part] + name] = tensor.detach().cpu().contiguous().clone()
    if not out:
        raise WeightsError("this model has no LoRRA, VPG or TPG to export")
    return out


def export_myriad_checkpoint(model: "MyriadLMM", path: str | Path) -> Path:
    """Write LoRRA / VPG / TPG in the authors' layout: ``.safetensors`` (flat) or a ``.pth`` ``{"model": {...}}``.

    The ``.pth`` holds tensors only (loadable with ``weights_only=True``, and by the
    original code's ``load_state_dict(ckpt["model"], strict=False)``). Written atomically.
    """
    import torch

    from myriad.io import atomic_path, save_tensors

    path = Path(path)
    tensors = myriad_state_dict(model)
    if path.suffix == ".safetensors":
        save_tensors(tensors, path, metadata={"layout": "myriad-authors", "preset": model.config.preset})
    else:
        with atomic_path(path) as tmp:
            torch.save({"model": tensors}, str(tmp))
    return path


# ----------------------------------------------------------------------------- orchestration
def load_paper_weights(
    model: "MyriadLMM",
    *,
    eva_vit: str | Path | None = None,
    blip2: str | Path | None = None,
    blip2_hf_dir: str | Path | None = None,
    minigpt4: str | Path | None = None,
    vicuna_dir: str | Path | None = None,
    myriad: str | Path | None = None,
    strict_myriad: bool = False,
) -> list[LoadReport]:
    """Load the published weights in the original order; one :class:`LoadReport` per file.

    Order: ``eva_vit`` (backbone), ``blip2`` (LAVIS: Q-Former, query tokens, ln_vision),
    ``blip2_hf_dir`` (Hugging Face BLIP-2: backbone, ln_vision, Q-Former, query tokens;
    an alternative to the first two), ``minigpt4`` (projection), ``vicuna_dir`` (LLM),
    ``myriad`` (the trained LoRRA / VPG / TPG). A later file overwrites what an earlier
    one filled. For a model built with ``MyriadLMM.empty``, initialise the parts no file
    provides (``model.init_parts([...])``) and call ``model.finalize()`` afterwards.
    """
    steps: list[tuple[Any, Callable[[], LoadReport]]] = [
        (eva_vit, lambda: load_eva_vit(model, eva_vit)),  # type: ignore[arg-type]
        (blip2, lambda: load_lavis_blip2(model, blip2)),  # type: ignore[arg-type]
        (blip2_hf_dir, lambda: load_hf_blip2(model, blip2_hf_dir)),  # type: ignore[arg-type]
        (minigpt4, lambda: load_minigpt4_projection(model, minigpt4)),  # type: ignore[arg-type]
        (vicuna_dir, lambda: load_vicuna(model, vicuna_dir)),  # type: ignore[arg-type]
        (myriad, lambda: load_myriad_checkpoint(model, myriad, strict=strict_myriad)),  # type: ignore[arg-type]
    ]
    reports = [run() for source, run in steps if source is not None]
    if not reports:
        raise WeightsError("load_paper_weights: no file given (eva_vit, blip2, blip2_hf_dir, minigpt4, vicuna_dir, myriad)")
    return reports
