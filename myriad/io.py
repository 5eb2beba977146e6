"""Safe file I/O: atomic writes, safetensors in and out, nothing pickled."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from myriad.errors import WeightsError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers never see a half-written file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_tensors(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Save torch tensors or numpy arrays to a safetensors file, atomically."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    prepared = {}
    for name, value in tensors.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        prepared[name] = value.detach().cpu().contiguous()
    with atomic_path(path) as tmp:
        save_file(prepared, str(tmp), metadata=metadata)


def load_tensors(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    """Load a safetensors file as torch tensors; a clear error if unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file: {exc}") from exc


def read_tensor_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored in a safetensors file's header (empty if none)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), "pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file: {exc}") from exc


def load_torch_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a ``.pth``/``.pt`` checkpoint with ``weights_only=True`` (no arbitrary code)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        return load_tensors(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types here
        raise WeightsError(f"{path}: cannot load checkpoint safely (weights_only=True): {exc}") from exc
