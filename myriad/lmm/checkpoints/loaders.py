"""Loaders of the published weight files into a Myriad model, one per file layout, and all of them in order.

Each reads its file (:mod:`.files`), renames the keys (:mod:`.keymaps`), checks and
applies them part by part (:mod:`.apply`) and returns a :class:`LoadReport`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from myriad.errors import WeightsError
from myriad.lmm.checkpoints.apply import (
    LoadReport,
    apply_part,
    expected_shapes,
    not_a,
    refuse_if_empty,
    require_eva_backbone,
)
from myriad.lmm.checkpoints.files import iter_hf_shards, read_json, read_state_dict
from myriad.lmm.checkpoints.keymaps import (
    MYRIAD_MODULES,
    MappedState,
    map_eva_vit_keys,
    map_hf_blip2_keys,
    map_lavis_blip2_keys,
    map_minigpt4_keys,
    map_myriad_keys,
    map_vicuna_keys,
)
from myriad.lmm.parts import full_key

if TYPE_CHECKING:  # pragma: no cover
    from myriad.lmm.model import MyriadLMM

__all__ = [
    "load_eva_vit",
    "load_hf_blip2",
    "load_lavis_blip2",
    "load_minigpt4_projection",
    "load_myriad_checkpoint",
    "load_paper_weights",
    "load_vicuna",
]


def load_eva_vit(model: "MyriadLMM", path: str | Path) -> LoadReport:
    """LAVIS ``eva_vit_g.pth`` -> the EVA ViT-g backbone (first ``vision.num_layers`` blocks)."""
    path = Path(path)
    require_eva_backbone(model, "eva_vit_g.pth")
    state = read_state_dict(path)
    mapped = map_eva_vit_keys(state, num_layers=model.config.vision.num_layers, source=str(path))
    refuse_if_empty(mapped, path, "an EVA ViT checkpoint", "'cls_token', 'pos_embed', 'blocks.0.attn.qkv.weight'", state)
    report = LoadReport(str(path), "eva_vit", unexpected=list(mapped.unexpected), notes=list(mapped.notes))
    report.missing = [
        full_key("backbone", k)
        for k in apply_part(model, report, mapped, "backbone", path, require_all=True, probe="embeddings.class_embedding")
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
        raise not_a(path, "a LAVIS BLIP-2 checkpoint", "'Qformer.bert.encoder.layer.0...', 'query_tokens'", state)
    report = LoadReport(str(path), "lavis_blip2", unexpected=list(mapped.unexpected), notes=list(mapped.notes))
    if "backbone" in mapped.parts:
        require_eva_backbone(model, "the visual_encoder of a LAVIS BLIP-2 checkpoint")
        apply_part(model, report, mapped, "backbone", path, require_all=True, probe="embeddings.class_embedding")
        report.notes.append("visual_encoder.* loaded over the backbone (as the original's non-strict load does)")
    for part in ("qformer", "query_tokens", "ln_vision"):
        apply_part(model, report, mapped, part, path, require_all=True)
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
    config = read_json(directory / "config.json")
    model_type = str(config.get("model_type", ""))
    if model_type and model_type.replace("_", "-") not in ("blip-2", "instructblip"):
        raise WeightsError(f"{directory / 'config.json'}: model_type {model_type!r} is not a BLIP-2 model")
    _check_hf_blip2_config(model, config, directory / "config.json")
    if include_vision:
        require_eva_backbone(model, "a BLIP-2 vision_model")

    def wanted(key: str) -> bool:
        if key.startswith("vision_model."):
            return include_vision
        return key.startswith("qformer.") or key == "query_tokens"

    mapped = MappedState()
    skipped: list[str] = []
    for file, tensors, not_read in iter_hf_shards(directory, wanted):
        mapped.merge(map_hf_blip2_keys(tensors, source=str(file)))
        skipped += not_read
    report = LoadReport(str(directory), "hf_blip2", unexpected=mapped.unexpected + skipped, notes=list(mapped.notes))
    if not any(p in mapped.parts for p in ("qformer", "query_tokens")):
        raise WeightsError(f"{directory}: no qformer.* / query_tokens tensors; not a BLIP-2 checkpoint")
    if skipped:
        report.notes.append(f"{len(skipped)} tensor(s) not read (language model / projection / excluded parts)")
    if include_vision:
        apply_part(model, report, mapped, "backbone", directory, require_all=True, probe="embeddings.class_embedding")
        apply_part(model, report, mapped, "ln_vision", directory, require_all=True)
    for part in ("qformer", "query_tokens"):
        apply_part(model, report, mapped, part, directory, require_all=True)
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
    refuse_if_empty(mapped, path, "a MiniGPT-4 checkpoint", "'llama_proj.weight', 'llama_proj.bias'", state)
    report = LoadReport(str(path), "minigpt4", unexpected=list(mapped.unexpected), notes=list(mapped.notes))
    apply_part(model, report, mapped, "language_projection", path, require_all=True)
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
    config = read_json(config_path)
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
    for file, tensors, _ in iter_hf_shards(directory, lambda key: True):
        mapped = map_vicuna_keys(tensors)
        report.unexpected += mapped.unexpected
        apply_part(model, report, mapped, "language_model", file, require_all=False)
        provided.update(mapped.parts.get("language_model", {}))
        del tensors, mapped
    expected = expected_shapes(model.parts()["language_model"])
    missing = [k for k in expected if k not in provided]
    if llm.tie_word_embeddings and "lm_head.weight" in missing:
        missing.remove("lm_head.weight")
        report.notes.append("lm_head.weight is tied to the input embeddings (call model.finalize())")
    if missing:
        raise WeightsError(
            f"{directory}: {len(missing)} tensor(s) of the language model are not in any shard, "
            f"e.g. {[full_key('language_model', k) for k in missing[:4]]}"
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
    refuse_if_empty(
        mapped, path, "a Myriad checkpoint", "'expert_adaptor.conv1.weight', 'VEInstructor.meta_net.0.weight'", state
    )
    report = LoadReport(str(path), "myriad", unexpected=list(mapped.unexpected), notes=list(mapped.notes))
    for part in MYRIAD_MODULES.values():
        if model.parts().get(part) is None:
            apply_part(model, report, mapped, part, path, require_all=False)  # records the unused tensors
            continue
        missing = apply_part(model, report, mapped, part, path, require_all=strict, unknown="report")
        report.missing += [full_key(part, k) for k in missing]
    return report


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
