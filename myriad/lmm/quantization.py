"""Inference precision of the frozen LLM: int8 dynamic quantisation for the CPU.

``MyriadLMM.quantize_language_model`` calls :func:`quantize_language_model`; the model
records the scheme in ``llm_quantization`` (training and the prefix cache read it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from myriad.lmm.errors import ConfigError
from myriad.lmm.vision import module_dtype

if TYPE_CHECKING:  # pragma: no cover
    from myriad.lmm.model import MyriadLMM

__all__ = ["QUANTIZATION_SCHEMES", "quantize_language_model"]

QUANTIZATION_SCHEMES = ("int8",)


def quantize_language_model(model: "MyriadLMM", scheme: str = "int8") -> "MyriadLMM":
    """Dynamically quantise the frozen LLM's linear layers for CPU inference (in place).

    ``int8``: weights stored as int8 per output channel, activations quantised on the fly
    (``torch.ao.quantization.quantize_dynamic``), for every linear layer except the MLP
    output projections (``down_proj``): their inputs carry SmolLM2's outlier activations,
    and quantising them turned most trained answers into ``unknown`` text (measured). The
    model can no longer be trained afterwards. A second call is a no-op.
    """
    if scheme not in QUANTIZATION_SCHEMES:
        raise ConfigError(f"unknown LLM quantisation {scheme!r}; supported: 'int8'")
    if model.llm_quantization is not None:
        return model
    if model.device.type != "cpu":
        raise ConfigError(f"int8 dynamic quantisation runs on the CPU; the model is on {model.device}")
    if module_dtype(model.language_model) != torch.float32:
        raise ConfigError("int8 quantisation needs a float32 language model (llm_dtype='float32')")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice (the API still works)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        spec = {
            name: per_channel_dynamic_qconfig
            for name, module in model.language_model.named_modules()
            if isinstance(module, nn.Linear) and not name.endswith("down_proj")
        }
        model.language_model = quantize_dynamic(model.language_model, spec, dtype=torch.qint8, inplace=True)
    model.llm_quantization = scheme
    return model
