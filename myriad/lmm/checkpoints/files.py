"""Reading weight files: single ``.pth``/``.bin``/``.safetensors`` files and Hugging Face model directories.

Tensors only (``torch.load(..., weights_only=True)`` or safetensors); nothing else is
unpickled. Sharded safetensors are read lazily, keeping only the keys asked for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from myriad.errors import WeightsError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["iter_hf_shards", "read_json", "read_state_dict"]


_WRAPPERS = ("model", "state_dict", "module")


def read_state_dict(path: str | Path) -> dict[str, "torch.Tensor"]:
    """The tensors of a ``.pth``/``.pt``/``.bin`` (weights only) or ``.safetensors`` file, unwrapped from ``"model"``."""
    from myriad.io import load_torch_checkpoint

    return load_torch_checkpoint(path, mmap=True, unwrap=_WRAPPERS, tensors_only=True)


def _hf_weight_files(directory: Path) -> list[Path]:
    """The weight files of a Hugging Face model directory (safetensors preferred, sharded or not)."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise WeightsError(f"{index}: not a readable weight index ({exc})") from exc
            files = [directory / name for name in dict.fromkeys(weight_map.values())]
            absent = [str(f) for f in files if not f.is_file()]
            if absent:
                raise WeightsError(f"{index}: lists shard(s) that are not there: {absent[:3]}")
            return files
        if (directory / single).is_file():
            return [directory / single]
    raise WeightsError(
        f"{directory}: no weights found (looked for model.safetensors[.index.json] and pytorch_model.bin[.index.json])"
    )


def iter_hf_shards(directory: Path, wanted: Callable[[str], bool]) -> Iterator[tuple[Path, dict[str, Any], list[str]]]:
    """Per shard: (file, tensors whose key is ``wanted``, keys not read). Safetensors are read lazily."""
    for file in _hf_weight_files(directory):
        if file.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(file), framework="pt", device="cpu") as handle:
                    keys = list(handle.keys())
                    tensors = {k: handle.get_tensor(k) for k in keys if wanted(k)}
            except (SafetensorError, OSError, ValueError) as exc:
                raise WeightsError(f"{file}: not a readable safetensors file: {exc}") from exc
        else:
            state = read_state_dict(file)
            keys = list(state)
            tensors = {k: v for k, v in state.items() if wanted(k)}
        yield file, tensors, [k for k in keys if not wanted(k)]


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WeightsError(f"{path}: not found (a Hugging Face model directory needs its config.json)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return data
