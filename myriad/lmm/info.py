"""Parameter counts of a Myriad configuration, computed on the meta device (nothing allocated or loaded)."""

from __future__ import annotations

from typing import Any

from myriad.lmm.config import MyriadConfig

__all__ = ["model_info"]


def model_info(config: MyriadConfig) -> dict[str, Any]:
    """Per-part parameter counts (trainable or frozen), totals and token counts of ``config``."""
    from myriad.lmm.model import MyriadLMM
    from myriad.lmm.parts import PART_PREFIXES

    model = MyriadLMM.empty(config)
    counts = model.part_parameter_counts()
    parts = []
    for name, count in counts.items():
        built = model.parts()[name] is not None
        parts.append(
            {
                "name": name,
                "params": count,
                "trainable": built and name in config.trainable,
                "built": built,
                "state_dict_prefix": PART_PREFIXES[name],
            }
        )
    trainable = sum(p["params"] for p in parts if p["trainable"])
    total = sum(p["params"] for p in parts)
    return {
        "preset": config.preset,
        "vision": config.vision.kind,
        "llm": config.llm.name,
        "parts": parts,
        "total": total,
        "trainable": trainable,
        "frozen": total - trainable,
        "tokens": {
            "visual_tokens": config.vision.num_tokens,
            "visual_token_dim": config.vision.token_dim,
            "query_tokens": config.qformer.num_query_tokens,
            "vpg_tokens": config.vpg_tokens if config.use_vpg else 0,
            "tpg_tokens": config.tpg_tokens if config.use_tpg else 0,
            "image_tokens_to_llm": config.image_tokens,
            "llm_hidden": config.llm.hidden_size,
        },
    }
