"""The feature cache of myriad.api: keyed by settings and pixels, bounded by bytes and by age."""

from __future__ import annotations

import numpy as np

from myriad.feature_cache import FeatureCache, image_digest


def test_digest_tells_pixels_shape_and_dtype_apart():
    image = np.zeros((8, 8, 3), np.uint8)
    other = image.copy()
    other[3, 4, 1] = 1
    assert image_digest(image) == image_digest(image.copy())
    assert len({image_digest(image), image_digest(other), image_digest(image.reshape(16, 4, 3)),
                image_digest(image.astype(np.uint16))}) == 4
    assert image_digest(np.asfortranarray(other)) == image_digest(other)  # layout does not matter, pixels do


def test_cache_is_bounded_by_bytes_least_recently_used_first_and_by_age(monkeypatch):
    import myriad.feature_cache as fc

    clock = [100.0]
    monkeypatch.setattr(fc.time, "monotonic", lambda: clock[0])
    cache = FeatureCache(ttl=10.0)
    rows = {k: np.full((4, 2), k, np.float32) for k in range(4)}  # 32 bytes each
    for k in range(3):
        cache.put("s", bytes([k]), rows[k], (2, 2), max_bytes=100)
    assert len(cache) == 3 and cache.nbytes == 96
    assert cache.get("s", bytes([0]))[0][0, 0] == 0  # 0 is now the most recently used
    cache.put("s", bytes([3]), rows[3], (2, 2), max_bytes=100)  # evicts 1, the least recently used
    assert cache.get("s", bytes([1])) is None and cache.get("s", bytes([0])) is not None
    assert cache.get("other settings", bytes([0])) is None
    cache.put("s", b"big", np.zeros((100, 2), np.float32), (2, 2), max_bytes=100)  # alone over the bound: not kept
    assert cache.get("s", b"big") is None and cache.nbytes <= 100
    clock[0] += 11.0
    assert cache.get("s", bytes([0])) is None and len(cache) == 0 and cache.nbytes == 0


def test_fetch_reads_cached_images_computes_the_rest_in_one_call_and_stores_only_when_asked():
    cache = FeatureCache()
    images = [np.full((4, 4, 3), k, np.uint8) for k in range(3)]
    calls: list[int] = []

    def compute(missing):
        calls.append(len(missing))
        return [(np.full(2, float(m[0, 0, 0]), np.float32), ("p", int(m[0, 0, 0]))) for m in missing]

    first = cache.fetch("s", images[:2], compute, max_bytes=1000, store=False)
    assert calls == [2] and len(cache) == 0 and [p for _, p in first] == [("p", 0), ("p", 1)]
    cache.fetch("s", images[:2], compute, max_bytes=1000, store=True)
    found = cache.fetch("s", images, compute, max_bytes=1000, store=True)
    assert calls == [2, 2, 1] and len(cache) == 3  # only the third image was computed
    assert [float(a[0]) for a, _ in found] == [0.0, 1.0, 2.0] and [p for _, p in found] == [("p", 0), ("p", 1), ("p", 2)]
