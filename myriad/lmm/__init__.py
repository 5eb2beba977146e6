"""Myriad's large multimodal model (paper Sec. 3): LoRRA, VPG, TPG, the VE-guided vision encoder, the LMM.

Importing this package is cheap; torch and transformers load with the first attribute used.
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
    "LoRRA": "modules",
    "VisualPromptGenerator": "modules",
    "TextualPromptGenerator": "modules",
    "VEGuidedVisionEncoder": "vision",
    "MyriadLMM": "model",
    "Conversation": "prompting",
    "parse_answer": "prompting",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"myriad.lmm.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'myriad.lmm' has no attribute {name!r}")
