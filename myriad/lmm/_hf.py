"""The transformers classes Myriad builds on, imported from their modules directly.

``from transformers import X`` goes through the package's lazy top-level namespace and
costs ~2.5 s more than importing the defining module (measured: 6.5 s vs 4.1 s here),
which matters for ``myriad model-info``.
"""

from __future__ import annotations

from typing import Any

from myriad.lmm.extra import require_lmm_extra

__all__ = ["blip2", "llama"]


def blip2() -> Any:
    """``(Blip2VisionConfig, Blip2VisionModel, Blip2QFormerConfig, Blip2QFormerModel)``."""
    require_lmm_extra()
    try:
        from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig, Blip2VisionConfig
        from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel, Blip2VisionModel
    except ImportError:  # pragma: no cover - layout changed; the public names still work
        from transformers import Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel
    return Blip2VisionConfig, Blip2VisionModel, Blip2QFormerConfig, Blip2QFormerModel


def llama() -> Any:
    """``(LlamaConfig, LlamaForCausalLM)``."""
    require_lmm_extra()
    try:
        from transformers.models.llama.configuration_llama import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaForCausalLM
    except ImportError:  # pragma: no cover
        from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaConfig, LlamaForCausalLM
