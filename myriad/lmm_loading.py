"""Loading the Myriad LMM for inference: the shipped ``mini`` weights or a file, at a chosen precision.

Used by :class:`myriad.inspection.Inspector`, ``myriad eval --lmm`` and the server (which loads
it once); :data:`PRECISIONS` and :data:`DEFAULT_PRECISION` are the ``--precision`` choices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from myriad.errors import ConfigError, WeightsError
from myriad.hardware import native_bfloat16

__all__ = ["DEFAULT_PRECISION", "PRECISIONS", "SHIPPED_MINI_WEIGHTS", "load_lmm", "native_bfloat16", "resolve_precision"]

#: The shipped trainable weights of the ``mini`` preset (see myriad/weights/MODEL_CARD.md).
SHIPPED_MINI_WEIGHTS = Path(__file__).resolve().parent / "weights" / "myriad-mini.safetensors"


#: LMM inference precisions. ``auto``: see :func:`resolve_precision`; ``bfloat16``: the LLM's
#: weights and activations in bfloat16; ``int8``: the LLM's linear layers in dynamic int8 (CPU).
PRECISIONS = ("auto", "float32", "bfloat16", "int8")
#: The precision ``myriad inspect / eval / serve`` use unless told otherwise.
DEFAULT_PRECISION = "auto"


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """The concrete precision for ``precision`` on ``device``: ``auto`` becomes ``bfloat16``
    where :func:`native_bfloat16` holds, else ``float32``; the others are returned unchanged."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown LMM precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


def load_lmm(lmm: str | Path | None = "mini", device: str = "cpu", precision: str = DEFAULT_PRECISION) -> Any:
    """The Myriad model: ``"mini"`` (shipped weights), a path to trained ``mini`` weights, or None.

    The model config is read from the weights' metadata (``myriad_config``, written by
    ``myriad train``), so a model trained with changes (e.g. the chat template) loads as
    trained; files without it get the default ``mini`` config. ``precision`` (see
    :data:`PRECISIONS`): ``bfloat16`` loads the LLM in bfloat16 (the trained modules stay
    float32), ``int8`` quantises its linear layers dynamically (CPU only), ``auto`` picks
    bfloat16 where the hardware has it (:func:`resolve_precision`), else float32.
    """
    if lmm is None or lmm == "none":
        return None
    precision = resolve_precision(precision, device)
    from myriad.io import load_tensors, read_tensor_metadata
    from myriad.lmm.config import MyriadConfig, mini_config
    from myriad.lmm.model import MyriadLMM

    weights = SHIPPED_MINI_WEIGHTS if lmm == "mini" else Path(lmm)
    if not weights.is_file():
        if lmm == "mini":
            raise WeightsError(
                f"{weights}: the shipped weights of the mini preset are missing; reinstall myriad-iad or train them "
                "with `myriad train --config benchmarks/train/mini.toml`"
            )
        raise WeightsError(f"{weights}: trained Myriad weights not found")
    metadata = read_tensor_metadata(weights)
    if metadata.get("preset", "mini") != "mini":
        raise WeightsError(f"{weights}: weights of the {metadata['preset']!r} preset; only mini weights load here")
    config = mini_config()
    if "myriad_config" in metadata:
        try:
            config = MyriadConfig.model_validate_json(metadata["myriad_config"])
        except ValueError as exc:
            raise WeightsError(f"{weights}: the stored model config is invalid for this version of myriad: {exc}") from exc
    if precision == "bfloat16":
        config = config.model_copy(update={"llm_dtype": "bfloat16"})
    model = MyriadLMM.mini(config)
    try:
        model.load_trainable_state_dict(load_tensors(weights))
    except WeightsError as exc:
        raise WeightsError(f"{weights}: {exc}") from exc
    model = model.to(device).eval()
    if precision == "int8":
        model.quantize_language_model("int8")
    return model
