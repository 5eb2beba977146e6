"""A short-lived, size-bounded cache of patch features, shared by the experts of one process.

The host calibrates a fitted expert by k-fold (:func:`myriad.calibration.fit_calibrated`):
``k`` copies each fit on part of the normal images and score the rest, then one expert fits
on all of them. Each image therefore goes through the backbone ``k + 1`` times, with
identical results, and at 512 px the backbone is most of the fit time. Features of fitted
images are kept here for a few minutes, keyed by the feature settings and a digest of the
image's pixels, so that every later fit (and the held-out scoring) of the same images
reuses them: the backbone runs about once per image instead of ``k + 1`` times.

Bounded twice: by bytes (least recently used entries go first) and by age (entries unused
for :data:`TTL_SECONDS` are dropped at the next access), so a long-running server does not
keep features of images it fitted hours ago. Only fits store; predictions only read, so
scoring a stream of new images never fills the cache.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Hashable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: Entries unused for this long are dropped.
TTL_SECONDS = 300.0


def image_digest(image: "np.ndarray") -> bytes:
    """A digest of an image's shape, dtype and pixels (blake2b, 16 bytes)."""
    import numpy as np

    array = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((array.shape, array.dtype.str)).encode())
    digest.update(memoryview(array).cast("B"))
    return digest.digest()


class FeatureCache:
    """Patch-feature rows (``h*w x D`` float32) and grid ``(h, w)`` per (settings, image digest)."""

    def __init__(self, ttl: float = TTL_SECONDS) -> None:
        self.ttl = float(ttl)
        self._entries: "OrderedDict[tuple[Hashable, bytes], tuple[np.ndarray, tuple[int, int], float]]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes of feature rows held."""
        return self._bytes

    def get(self, settings: Hashable, digest: bytes) -> "tuple[np.ndarray, tuple[int, int]] | None":
        """The rows and grid stored for ``digest`` under ``settings``, or None."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            entry = self._entries.get((settings, digest))
            if entry is None:
                return None
            rows, grid, _ = entry
            self._entries[(settings, digest)] = (rows, grid, now)
            self._entries.move_to_end((settings, digest))
            return rows, grid

    def put(self, settings: Hashable, digest: bytes, rows: "np.ndarray", grid: tuple[int, int], max_bytes: int) -> None:
        """Store ``rows`` (kept as given: do not modify them later) unless they alone exceed ``max_bytes``."""
        size = int(rows.nbytes)
        if size > max_bytes:
            return
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            old = self._entries.pop((settings, digest), None)
            if old is not None:
                self._bytes -= int(old[0].nbytes)
            while self._entries and self._bytes + size > max_bytes:
                _, (evicted, _, _) = self._entries.popitem(last=False)
                self._bytes -= int(evicted.nbytes)
            self._entries[(settings, digest)] = (rows, grid, now)
            self._bytes += size

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _expire(self, now: float) -> None:
        while self._entries:
            key, (rows, _, used) = next(iter(self._entries.items()))
            if now - used <= self.ttl:
                break
            del self._entries[key]
            self._bytes -= int(rows.nbytes)


#: The cache shared by every PatchCore expert of this process.
CACHE = FeatureCache()
