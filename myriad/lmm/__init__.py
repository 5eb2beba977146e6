"""Myriad's large multimodal model (paper Sec. 3): LoRRA, VPG, TPG, the VE-guided vision encoder, the LMM.

Importing this package is cheap; torch and transformers load with the first attribute used.

Modules, one job each: ``config`` (schema and presets), ``parts`` (the table of the nine
model parts), ``lorra`` / ``vpg`` / ``tpg`` (the paper's three modules; their shared trunk in
``prompt_generator``), ``vision`` (backbones and the VE-guided vision encoder),
``language_model`` (the frozen LLM's build), ``model`` (``MyriadLMM``: parts, loading,
encoding), ``prompting`` (templates, conversations, the parse rule), ``prompt_assembly``
(token ids and the image-token splice), ``loss``, ``generation``, ``quantization``,
``inputs`` (pixel and map checks), ``checkpoints`` (published weight files), ``smollm2`` /
``tiny`` (language models for ``mini`` and tests), ``info`` (parameter counts).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Conversation",
    "LoRRA",
    "MyriadConfig",
    "MyriadLMM",
    "TextualPromptGenerator",
    "VEGuidedVisionEncoder",
    "VisualPromptGenerator",
    "mini_config",
    "paper_config",
    "parse_answer",
    "preset_config",
]

_WHERE = {
    "MyriadConfig": "config",
    "mini_config": "config",
    "paper_config": "config",
    "preset_config": "config",
    "LoRRA": "lorra",
    "VisualPromptGenerator": "vpg",
    "TextualPromptGenerator": "tpg",
    "VEGuidedVisionEncoder": "vision",
    "MyriadLMM": "model",
    "Conversation": "prompting",
    "parse_answer": "prompting",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"myriad.lmm.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'myriad.lmm' has no attribute {name!r}")
