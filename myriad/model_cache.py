"""A small cache of frozen models, so that experts built with the same settings share them.

Calibration folds, contract tests and repeated runs build several experts with one config;
loading the same weights again would cost seconds (or gigabytes) each time. Entries are
keyed by the settings and the weight files' modification times; the two most recent stay.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

_ENTRIES: "OrderedDict[Hashable, Any]" = OrderedDict()
_SIZE = 2
_LOCK = threading.Lock()


def file_stamp(path: str | None) -> tuple[str | None, int | None]:
    """A file's identity for a cache key: its path and modification time (None when absent)."""
    if path is None or not os.path.isfile(path):
        return (path, None)
    return (os.path.abspath(path), os.stat(path).st_mtime_ns)


def cached(key: Hashable, build: Callable[[], Any]) -> Any:
    """``build()`` once per ``key`` (among the most recent entries)."""
    with _LOCK:
        if key in _ENTRIES:
            _ENTRIES.move_to_end(key)
            return _ENTRIES[key]
    value = build()
    with _LOCK:
        _ENTRIES[key] = value
        while len(_ENTRIES) > _SIZE:
            _ENTRIES.popitem(last=False)
    return value


def clear() -> None:
    """Forget every cached model."""
    with _LOCK:
        _ENTRIES.clear()
