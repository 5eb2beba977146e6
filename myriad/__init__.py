"""Myriad: industrial anomaly detection with vision experts guiding a large multimodal model.

The public API is re-exported lazily so that ``import myriad`` (and therefore
``myriad --help`` and plugin discovery) never imports torch. Plugin authors import
from :mod:`myriad.api`, the public surface for plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "hookimpl": "myriad.hookspecs",
    "Mode": "myriad.experts",
    "Expert": "myriad.experts",
    "ExpertInfo": "myriad.experts",
    "Prediction": "myriad.experts",
    "get_expert": "myriad.plugins",
    "list_experts": "myriad.plugins",
    "MyriadError": "myriad.errors",
    "ConfigError": "myriad.errors",
    "load_image": "myriad.images",
    "Calibrator": "myriad.calibration",
    "Detector": "myriad.detector",
    "Inspector": "myriad.inspection",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from myriad.calibration import Calibrator
    from myriad.detector import Detector
    from myriad.errors import ConfigError, MyriadError
    from myriad.experts import Expert, ExpertInfo, Mode, Prediction
    from myriad.hookspecs import hookimpl
    from myriad.images import load_image
    from myriad.inspection import Inspector
    from myriad.plugins import get_expert, list_experts


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'myriad' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
