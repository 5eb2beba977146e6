"""How many bytes a profile or a session holds: the arrays, tensors and byte strings reachable from it.

An approximation, honest in one direction: it counts the payloads (NumPy arrays, torch tensors'
storages, ``bytes``) an object graph reaches, each buffer once, and leaves out Python's per-object
overhead (small next to images, maps and memory banks). Whatever is shared by every profile (the LMM)
is passed as ``exclude`` and not walked. Pure: it reads the graph, changes nothing.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Iterable

__all__ = ["held_bytes", "MAX_NODES"]

#: Most objects one count visits; a graph larger than this is counted up to there (a bound on the time).
MAX_NODES = 200_000
_SKIPPED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, str, int, float,
            complex, bool, type(None))


def _array_bytes(array: Any, seen: set[int]) -> int:
    """A NumPy array's bytes: its base buffer's, once however many views reach it."""
    import numpy as np

    while isinstance(array.base, np.ndarray):
        array = array.base
    if id(array) in seen:
        return 0
    seen.add(id(array))
    return int(array.nbytes)


def _tensor_bytes(tensor: Any, seen: set[int]) -> int:
    """A torch tensor's storage bytes, once however many tensors share the storage."""
    try:
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), int(storage.nbytes())
    except (RuntimeError, NotImplementedError):  # pragma: no cover - meta or sparse tensors
        return 0
    if key == 0 or ("storage", key) in seen:
        return 0
    seen.add(("storage", key))  # type: ignore[arg-type]
    return size


def _children(node: Any) -> Iterable[Any]:
    if isinstance(node, dict):
        yield from node.keys()
        yield from node.values()
    elif isinstance(node, (list, tuple, set, frozenset)):
        yield from node
    else:
        state = getattr(node, "__dict__", None)
        if isinstance(state, dict):
            yield from state.values()
        slots = getattr(type(node), "__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__"):
                value = getattr(node, slot, None)
                if value is not None:
                    yield value


def held_bytes(*roots: Any, exclude: Iterable[Any] = ()) -> int:
    """Bytes of the arrays, tensors and byte strings reachable from ``roots``, each buffer counted once.

    Objects in ``exclude`` (e.g. the shared LMM) are neither counted nor walked; nor are classes,
    modules, functions and scalars. At most :data:`MAX_NODES` objects are visited.
    """
    np = sys.modules.get("numpy")
    torch = sys.modules.get("torch")
    seen: set[Any] = {id(x) for x in exclude if x is not None}
    stack = [r for r in roots if r is not None]
    total = visited = 0
    while stack and visited < MAX_NODES:
        node = stack.pop()
        if isinstance(node, _SKIPPED) or id(node) in seen:
            continue
        if np is not None and isinstance(node, np.ndarray):
            total += _array_bytes(node, seen)
            continue
        seen.add(id(node))
        visited += 1
        if isinstance(node, (bytes, bytearray, memoryview)):
            total += len(node) if not isinstance(node, memoryview) else node.nbytes
        elif torch is not None and isinstance(node, torch.Tensor):
            total += _tensor_bytes(node, seen)
            if isinstance(node, torch.nn.Parameter):
                continue
        else:
            stack.extend(_children(node))
    return total
