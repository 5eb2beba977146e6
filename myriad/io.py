"""Safe file I/O: atomic writes, safetensors in and out, checkpoints read without running pickled code."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from myriad.errors import WeightsError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


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


#: Keys under which training scripts commonly nest the tensors (``{"model": state, "optimizer": ...}``).
CHECKPOINT_WRAPPERS = ("state_dict", "model", "module")


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript zip archive (it holds ``code/`` and ``constants.pkl``)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def _holds_tensors(obj: Mapping[str, Any]) -> bool:
    import torch

    return any(isinstance(v, torch.Tensor) for v in obj.values())


def _find_tensors(obj: Mapping[str, Any], wrappers: Sequence[str]) -> Mapping[str, Any] | None:
    """The first mapping holding tensors: ``obj`` itself, else under ``wrappers`` (in order, depth first)."""
    if obj and _holds_tensors(obj):
        return obj
    for wrapper in wrappers:
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping):
            found = _find_tensors(inner, wrappers)
            if found is not None:
                return found
    return None


def load_torch_checkpoint(
    path: str | Path,
    *,
    what: str = "checkpoint file",
    hint: str = "",
    torchscript: bool = False,
    mmap: bool = False,
    unwrap: Sequence[str] = (),
    tensors_only: bool = False,
    strip_prefix: str = "",
) -> dict[str, Any]:
    """Load a local ``.pth``/``.pt``/``.bin`` checkpoint (or ``.safetensors``) without running pickled code.

    Pickles are read with ``torch.load(..., weights_only=True)``; ``.safetensors`` files with
    :func:`load_tensors`. Options:

    - ``torchscript``: a TorchScript archive (OpenAI's released CLIP ``.pt`` files, which
      ``weights_only`` cannot read) is opened with ``torch.jit.load``, which runs no pickled
      Python code, and its state dict is returned;
    - ``mmap``: memory-map the file when its format allows (legacy non-zip files are read plainly);
    - ``unwrap``: container keys (e.g. :data:`CHECKPOINT_WRAPPERS`) under which the tensors may be
      nested; the first mapping holding tensors is returned: the top level, else the first
      wrapper that holds them (searched in order, depth first). None holding any is an error;
    - ``tensors_only``: drop the entries that are not tensors (ints such as ``input_resolution``);
    - ``strip_prefix``: removed from the keys that start with it (``"module."`` of DataParallel).

    Every failure is a :class:`WeightsError` that names the file: ``"<path>: <what> not found"``
    (followed by ``"; <hint>"`` when a hint is given), a directory, an unreadable file, a file
    that is not a state dict, or no tensors under ``unwrap``.
    """
    import torch

    path = Path(path)
    suffix = f"; {hint}" if hint else ""
    if path.is_dir():
        raise WeightsError(f"{path}: is a directory; this loader expects a single checkpoint file{suffix}")
    if not path.is_file():
        raise WeightsError(f"{path}: {what} not found{suffix}")
    state: Any
    if path.suffix == ".safetensors":
        state = load_tensors(path)  # flat by construction: nothing to unwrap
        unwrap = ()
    elif torchscript and is_torchscript(path):
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as exc:  # noqa: BLE001 - torch raises many types here
            raise WeightsError(f"{path}: unreadable TorchScript archive: {exc}") from exc
    else:
        state = _torch_load(path, mmap)
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: expected a state dict (a mapping of names to tensors), found {type(state).__name__}")
    if unwrap:
        found = _find_tensors(state, unwrap)
        if found is None:
            top = ", ".join(repr(k) for k in list(state)[:8])
            raise WeightsError(
                f"{path}: no tensors found at the top level or under {list(unwrap)} (top-level keys: {top})"
            )
        state = found
    if tensors_only or strip_prefix:
        out = {}
        for key, value in state.items():
            if tensors_only and not isinstance(value, torch.Tensor):
                continue
            if strip_prefix and key.startswith(strip_prefix):
                key = key[len(strip_prefix) :]
            out[key] = value
        return out
    return state if isinstance(state, dict) else dict(state)


def _torch_load(path: Path, mmap: bool) -> Any:
    """``torch.load`` with ``weights_only=True`` (memory-mapped first if ``mmap``); a clear error if unreadable."""
    import torch

    if mmap:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be mmapped; retry plainly for a clear error
            pass
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types here
        raise WeightsError(f"{path}: cannot load checkpoint safely (weights_only=True): {exc}") from exc


def load_state_dict_strict(module: "nn.Module", state: Mapping[str, Any], source: str, what: str | None = None) -> None:
    """``module.load_state_dict(state, strict=True)`` with one clear error listing missing, unexpected and misshaped keys.

    The :class:`WeightsError` starts with ``source`` (the file) and ``what`` was loaded:
    ``"<source>: the <what> does not match the architecture: ..."`` (``"<source>: weights do
    not match ..."`` without ``what``), then the counts and a few keys of each kind.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        detail = [f"{len(missing)} missing (e.g. {missing[:3]})", f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"]
        if shapes:
            k = shapes[0]
            detail.append(f"{len(shapes)} misshaped (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})")
        subject = f"the {what} does" if what else "weights do"
        raise WeightsError(f"{source}: {subject} not match the architecture: " + ", ".join(detail))
    module.load_state_dict(state, strict=True)
