"""The one cache of frozen models for the core and every plugin, so that experts built with the same settings share them.

Calibration folds, contract tests, repeated runs and server threads build several experts
with one config; loading the same weights again would cost seconds (or gigabytes) each
time. Entries are keyed by what the load depends on (the settings and the weight files'
:func:`file_stamp`); each ``group`` keeps its ``keep`` most recently used entries, so one
plugin's backbones do not push out another's models.

Thread-safe load-or-get: a key is built once even when several threads ask for it at the
same time (the others wait for that build and share its result), while different keys
build in parallel and lookups of built entries never wait for a build. A build that
raises caches nothing. Plugins use it through :mod:`myriad.api` (``cached``, ``file_stamp``).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

__all__ = ["DEFAULT_GROUP", "cached", "cached_models", "clear", "file_stamp"]

#: The group of :func:`cached` calls that name none.
DEFAULT_GROUP = "models"
_DEFAULT_KEEP = 2


class _Group:
    """The recent entries of one group, least recently used first."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.entries: "OrderedDict[Hashable, Any]" = OrderedDict()
        self.building: dict[Hashable, threading.Lock] = {}


_GROUPS: dict[str, _Group] = {}
_LOCK = threading.Lock()  # guards _GROUPS and every group's entries and build locks


def file_stamp(path: str | None) -> tuple[str | None, int | None]:
    """A file's identity for a cache key: its path and modification time (None when absent)."""
    if path is None or not os.path.isfile(path):
        return (path, None)
    return (os.path.abspath(path), os.stat(path).st_mtime_ns)


def _lookup(group: _Group, key: Hashable) -> tuple[bool, Any]:
    if key in group.entries:
        group.entries.move_to_end(key)
        return True, group.entries[key]
    return False, None


def cached(key: Hashable, build: Callable[[], Any], *, group: str = DEFAULT_GROUP, keep: int = _DEFAULT_KEEP) -> Any:
    """``build()`` once per ``key`` among the ``keep`` most recent entries of ``group``; thread-safe.

    ``key`` must name everything the built model depends on (settings, device,
    :func:`file_stamp` of its weights). ``group`` gives a plugin an LRU of its own;
    ``keep`` (at least 1) is that group's size.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    with _LOCK:
        pool = _GROUPS.setdefault(group, _Group(keep))
        pool.keep = keep
        found, value = _lookup(pool, key)
        if found:
            return value
        building = pool.building.setdefault(key, threading.Lock())
    with building:  # one build per key; other keys are not held up
        with _LOCK:
            found, value = _lookup(pool, key)
        if found:
            return value  # built by the thread this one waited for
        try:
            value = build()
        except BaseException:
            with _LOCK:
                _done_building(pool, key, building)
            raise
        with _LOCK:  # stored and released together: no later caller can start a second build
            pool.entries[key] = value
            while len(pool.entries) > pool.keep:
                pool.entries.popitem(last=False)
            _done_building(pool, key, building)
    return value


def _done_building(pool: _Group, key: Hashable, building: threading.Lock) -> None:
    if pool.building.get(key) is building:
        del pool.building[key]


def cached_models() -> list[Any]:
    """Every model the cache holds now (of every group), e.g. to leave shared models out of a memory count."""
    with _LOCK:
        return [value for pool in _GROUPS.values() for value in pool.entries.values()]


def clear() -> None:
    """Forget every cached model (of every group)."""
    with _LOCK:
        for pool in _GROUPS.values():
            pool.entries.clear()
