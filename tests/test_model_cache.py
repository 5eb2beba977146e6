"""The one model cache of the core and the plugins: load-or-get once per key, thread-safe, per-group LRU."""

from __future__ import annotations

import threading
import time

import pytest

from myriad import model_cache
from myriad.model_cache import cached


@pytest.fixture(autouse=True)
def _empty_cache():
    model_cache.clear()
    yield
    model_cache.clear()


def test_threads_asking_for_one_key_share_a_single_build():
    builds = []

    def build():
        builds.append(1)
        time.sleep(0.05)
        return object()

    results = []
    threads = [threading.Thread(target=lambda: results.append(cached(("t", 1), build, group="test"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len({id(r) for r in results}) == 1


def test_groups_keep_their_own_most_recent_entries():
    for i in range(3):
        cached(("a", i), lambda i=i: i, group="a", keep=2)
    cached(("b", 0), lambda: "b", group="b", keep=1)
    calls = []
    assert cached(("a", 0), lambda: calls.append(0) or "rebuilt", group="a", keep=2) == "rebuilt"  # evicted
    assert cached(("a", 2), lambda: calls.append(2), group="a", keep=2) == 2  # still there
    assert cached(("b", 0), lambda: calls.append("b"), group="b", keep=1) == "b"  # not pushed out by group a
    assert calls == [0]


def test_a_failed_build_caches_nothing():
    def fail():
        raise RuntimeError("no weights")

    with pytest.raises(RuntimeError):
        cached("k", fail, group="test")
    assert cached("k", lambda: 7, group="test") == 7
