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

This package is the public import path (``from myriad.lmm.checkpoints import ...``); it
re-exports its modules, one job each: ``files`` (reading files and Hugging Face
directories), ``keymaps`` (the ``map_*`` key maps), ``apply`` (checks, loading into a
part, :class:`LoadReport`), ``loaders`` (one loader per layout and
:func:`load_paper_weights`), ``export`` (the authors' layout written back).
"""

from __future__ import annotations

from myriad.lmm.checkpoints.apply import LoadReport
from myriad.lmm.checkpoints.export import export_myriad_checkpoint, myriad_state_dict
from myriad.lmm.checkpoints.files import read_state_dict
from myriad.lmm.checkpoints.keymaps import (
    MappedState,
    map_eva_vit_keys,
    map_hf_blip2_keys,
    map_lavis_blip2_keys,
    map_lavis_qformer_keys,
    map_minigpt4_keys,
    map_myriad_keys,
    map_vicuna_keys,
)
from myriad.lmm.checkpoints.loaders import (
    load_eva_vit,
    load_hf_blip2,
    load_lavis_blip2,
    load_minigpt4_projection,
    load_myriad_checkpoint,
    load_paper_weights,
    load_vicuna,
)

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
