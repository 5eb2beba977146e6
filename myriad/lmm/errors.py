"""Errors of the multimodal model; all are :class:`myriad.errors.MyriadError` (and ``ValueError`` where apt)."""

from __future__ import annotations

from myriad.errors import ConfigError, MyriadError, WeightsError

__all__ = ["AnomalyMapError", "ConfigError", "InputError", "PromptTooLongError", "WeightsError"]


class InputError(MyriadError, ValueError):
    """An input tensor (pixels, anomaly map) has the wrong shape, dtype or values."""


class AnomalyMapError(InputError):
    """An anomaly map cannot be fed to the prompt generators (ndim, dtype, NaN, batch size)."""


class PromptTooLongError(MyriadError, ValueError):
    """Instruction + image tokens (+ answer or new tokens) do not fit the LLM context; nothing is truncated."""
