"""THE public surface for plugin authors: every core name an expert plugin may import.

A plugin imports from this module only::

    from myriad.api import Expert, Mode, Prediction, hookimpl

Everything else under ``myriad`` belongs to the host and may change without notice; the
names below keep their meaning (arguments are only ever added). Each one is documented in
``docs/writing-plugins.md`` (``tests/test_docs.py`` checks it), and
``tests/test_plugin_api.py`` checks that every plugin in this repository imports nothing
else from the core.

- the contract: :data:`hookimpl` (marks ``register_experts``), :class:`Expert`,
  :class:`Mode`, :class:`Prediction`, :func:`check_layer_indices`;
- errors: :class:`MyriadError` and the kinds a plugin raises or meets
  (:class:`ConfigError`, :class:`WeightsError`, :class:`DatasetError`,
  :class:`ContractError`);
- images: :func:`load_image`, :func:`as_rgb`, :func:`to_tensor`, :func:`resize_map`;
- hardware: :func:`native_bfloat16` (whether a device computes bfloat16 natively);
- datasets (for plugins that train): :class:`Category`, :class:`Sample`, :func:`load_mask`;
- backbones: :class:`FeatureBackbone` (a frozen timm CNN returning chosen stages),
  :func:`vit_tokens`, :func:`resize_positional_embedding` (open_clip ViTs);
- weights and files: :func:`load_torch_checkpoint`, :data:`CHECKPOINT_WRAPPERS`,
  :func:`load_state_dict_strict`, :func:`load_tensors`, :func:`save_tensors`,
  :func:`atomic_path`;
- the model cache: :func:`cached`, :func:`file_stamp`;
- the feature cache (features of fitted images reused across calibration folds):
  :class:`FeatureCache`, :func:`image_digest`;
- held-out scores from a memory bank (:meth:`Expert.heldout_predictions`): :func:`nearest_outside_group`.

Importing this module is cheap: each name is resolved on first use (a module-level
``__getattr__``), and none of the modules behind them imports torch at import time; torch
loads only when a helper that needs it is called. ``plugin.py`` can therefore import
``hookimpl`` and ``check_layer_indices`` from here without slowing ``myriad experts``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

#: public name -> the core module that defines it
_SOURCES = {
    # the contract
    "hookimpl": "myriad.hookspecs",
    "Expert": "myriad.experts",
    "Mode": "myriad.experts",
    "Prediction": "myriad.experts",
    "check_layer_indices": "myriad.experts",
    # errors
    "MyriadError": "myriad.errors",
    "ConfigError": "myriad.errors",
    "WeightsError": "myriad.errors",
    "DatasetError": "myriad.errors",
    "ContractError": "myriad.errors",
    # images
    "load_image": "myriad.images",
    "as_rgb": "myriad.images",
    "to_tensor": "myriad.images",
    "resize_map": "myriad.images",
    "native_bfloat16": "myriad.hardware",
    # datasets
    "Category": "myriad.datasets",
    "Sample": "myriad.datasets",
    "load_mask": "myriad.datasets",
    # backbones
    "FeatureBackbone": "myriad.backbone",
    "vit_tokens": "myriad.vit_taps",
    "resize_positional_embedding": "myriad.vit_taps",
    # weights and files
    "load_torch_checkpoint": "myriad.io",
    "CHECKPOINT_WRAPPERS": "myriad.io",
    "load_state_dict_strict": "myriad.io",
    "load_tensors": "myriad.io",
    "save_tensors": "myriad.io",
    "atomic_path": "myriad.io",
    # the model cache
    "cached": "myriad.model_cache",
    "file_stamp": "myriad.model_cache",
    "FeatureCache": "myriad.feature_cache",
    "image_digest": "myriad.feature_cache",
    # held-out scores from a memory bank
    "nearest_outside_group": "myriad.neighbours",
}

__all__ = list(_SOURCES)

if TYPE_CHECKING:  # pragma: no cover
    from myriad.backbone import FeatureBackbone
    from myriad.datasets import Category, Sample, load_mask
    from myriad.errors import ConfigError, ContractError, DatasetError, MyriadError, WeightsError
    from myriad.experts import Expert, Mode, Prediction, check_layer_indices
    from myriad.hookspecs import hookimpl
    from myriad.images import as_rgb, load_image, resize_map, to_tensor
    from myriad.io import (
        CHECKPOINT_WRAPPERS,
        atomic_path,
        load_state_dict_strict,
        load_tensors,
        load_torch_checkpoint,
        save_tensors,
    )
    from myriad.feature_cache import FeatureCache, image_digest
    from myriad.model_cache import cached, file_stamp
    from myriad.neighbours import nearest_outside_group
    from myriad.vit_taps import resize_positional_embedding, vit_tokens


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'myriad.api' has no attribute {name!r} (plugins may use: {', '.join(__all__)})")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
