"""The table of the nine parts of a Myriad model: the one list every other place reads.

A part is what can be loaded (``MyriadLMM.load_part``), initialised (``init_parts``),
trained or frozen (``MyriadConfig.trainable``) and counted (``model_info``). Each row
says where the part sits in the model (its attribute path, hence its state-dict prefix),
which config switch may leave it out, which function builds it fresh, and which config
fields set its shapes (quoted by the checkpoint loaders when a file does not fit).

Torch-free: the config and the CLI read it without loading torch.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["PARTS", "PART_NAMES", "PART_PREFIXES", "Part", "count_parameters", "full_key", "get_part"]


@dataclass(frozen=True)
class Part:
    """One model part, in pipeline order in :data:`PARTS`."""

    name: str
    #: Dotted attribute path from the ``MyriadLMM`` (``vision_encoder.lorra``).
    attribute: str
    #: Config fields that set this part's tensor shapes (for loader error messages).
    shape_fields: str
    #: The config flag that may switch the part off (``use_lorra``), or None if always built.
    switch: str | None = None
    #: ``module:function`` (in ``myriad.lmm``) building fresh weights from a config; None: load it instead.
    builder: str | None = None
    #: A bare ``nn.Parameter`` (the query tokens) rather than a module.
    tensor: bool = False

    @property
    def prefix(self) -> str:
        """The part's prefix in the model's state dict (a tensor part's key has no suffix)."""
        return self.attribute if self.tensor else self.attribute + "."

    def get(self, model: Any) -> Any:
        """This part of ``model`` (None where switched off)."""
        owner, name = self._owner(model)
        return getattr(owner, name)

    def set(self, model: Any, value: Any) -> None:
        """Put ``value`` in this part's place in ``model``."""
        owner, name = self._owner(model)
        setattr(owner, name, value)

    def _owner(self, model: Any) -> tuple[Any, str]:
        *path, name = self.attribute.split(".")
        for step in path:
            model = getattr(model, step)
        return model, name

    def build(self, config: Any) -> Any:
        """A freshly initialised part for ``config`` (imports torch)."""
        if self.builder is None:
            raise ValueError(f"part {self.name!r} has no builder; it is loaded from weights")
        module, function = self.builder.split(":")
        return getattr(importlib.import_module(f"myriad.lmm.{module}"), function)(config)


PARTS: tuple[Part, ...] = (
    Part(
        "backbone",
        "vision_encoder.backbone",
        "vision.hidden_size / num_heads / intermediate_size / patch_size / image_size",
    ),
    Part("lorra", "vision_encoder.lorra", "lorra.rank / vision.hidden_size", "use_lorra", "lorra:build_lorra"),
    Part("ln_vision", "vision_encoder.ln_vision", "vision.hidden_size", builder="vision:build_ln_vision"),
    Part(
        "vpg", "vision_encoder.vpg", "prompt_generators.trunk_channels / qformer.hidden_size", "use_vpg", "vpg:build_vpg"
    ),
    Part(
        "query_tokens",
        "vision_encoder.query_tokens",
        "qformer.num_query_tokens / qformer.hidden_size",
        builder="vision:build_query_tokens",
        tensor=True,
    ),
    Part(
        "qformer",
        "vision_encoder.qformer",
        "qformer.* and vision.hidden_size (the cross-attention width)",
        builder="vision:build_qformer",
    ),
    Part(
        "language_projection",
        "vision_encoder.language_projection",
        "qformer.hidden_size / llm.hidden_size",
        builder="vision:build_language_projection",
    ),
    Part("tpg", "tpg", "prompt_generators.* / llm.hidden_size", "use_tpg", "tpg:build_tpg"),
    Part("language_model", "language_model", "llm.*"),
)

#: Part names in pipeline order.
PART_NAMES: tuple[str, ...] = tuple(p.name for p in PARTS)
#: Where each part lives in the model's state dict.
PART_PREFIXES: dict[str, str] = {p.name: p.prefix for p in PARTS}
_BY_NAME = {p.name: p for p in PARTS}


def get_part(name: str) -> Part | None:
    """The row of part ``name`` (None for an unknown name)."""
    return _BY_NAME.get(name)


def full_key(part: str, key: str) -> str:
    """The model state-dict key of ``key`` inside ``part`` (the query tokens' key is the prefix itself)."""
    row = _BY_NAME.get(part)
    if row is None:
        return f"{part}.{key}"
    return row.prefix if row.tensor else row.prefix + key


def count_parameters(module: Any) -> int:
    """Number of parameters of a module (0 for None; works on the meta device)."""
    if module is None:
        return 0
    return sum(math.prod(p.shape) for p in module.parameters())
