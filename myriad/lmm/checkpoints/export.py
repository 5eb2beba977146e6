"""Export of the trained LoRRA / VPG / TPG under the authors' key names (loadable by the original code)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from myriad.errors import WeightsError
from myriad.lmm.checkpoints.keymaps import MYRIAD_LORRA, MYRIAD_MODULES

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from myriad.lmm.model import MyriadLMM

__all__ = ["export_myriad_checkpoint", "myriad_state_dict"]


_OUR_LORRA = {v: k for k, v in MYRIAD_LORRA.items()}
_OUR_MODULES = {v: k for k, v in MYRIAD_MODULES.items()}


def myriad_state_dict(model: "MyriadLMM") -> dict[str, "torch.Tensor"]:
    """Our LoRRA / VPG / TPG tensors under the authors' key names (CPU, contiguous copies)."""
    out: dict[str, Any] = {}
    for part in MYRIAD_MODULES.values():
        module = model.parts().get(part)
        if module is None:
            continue
        for key, tensor in module.state_dict().items():
            if tensor.is_meta:
                raise WeightsError(f"part {part!r} has no weights yet (meta device); load or init it before exporting")
            if part == "lorra":
                name = _OUR_LORRA[key]
            elif key.startswith("net."):
                name = "meta_net." + key[len("net.") :]
            else:
                name = key
            out[_OUR_MODULES[part] + name] = tensor.detach().cpu().contiguous().clone()
    if not out:
        raise WeightsError("this model has no LoRRA, VPG or TPG to export")
    return out


def export_myriad_checkpoint(model: "MyriadLMM", path: str | Path) -> Path:
    """Write LoRRA / VPG / TPG in the authors' layout: ``.safetensors`` (flat) or a ``.pth`` ``{"model": {...}}``.

    The ``.pth`` holds tensors only (loadable with ``weights_only=True``, and by the
    original code's ``load_state_dict(ckpt["model"], strict=False)``). Written atomically.
    """
    import torch

    from myriad.io import atomic_path, save_tensors

    path = Path(path)
    tensors = myriad_state_dict(model)
    if path.suffix == ".safetensors":
        save_tensors(tensors, path, metadata={"layout": "myriad-authors", "preset": model.config.preset})
    else:
        with atomic_path(path) as tmp:
            torch.save({"model": tensors}, str(tmp))
    return path
