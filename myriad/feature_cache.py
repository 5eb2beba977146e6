"""A short-lived, size-bounded cache of per-image features, for experts that fit on normal images.

The host calibrates a fitted expert by k-fold (:func:`myriad.calibration.fit_calibrated`):
``k`` copies each fit on part of the normal images and score the rest, then one expert fits
on all of them. Each image therefore goes through the backbone ``k + 1`` times, with
identical results, and the features are most of the fit time. Features of fitted images
are kept in a :class:`FeatureCache` (each plugin holds its own instance) for a few minutes,
keyed by the feature settings and a digest of the image's pixels, so that every later fit
(and the held-out scoring) of the same images reuses them: the features are computed about
once per image instead of ``k + 1`` times.

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
from typing import TYPE_CHECKING, Callable, Hashable, Sequence

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
    """One feature array per (settings, image digest), with a small hashable payload beside it.

    ``settings`` is whatever the features depend on (backbone, layers, size, ...): entries of
    other settings are never returned. The payload (e.g. a grid shape) is stored with the array
    and is not counted in the byte bound.
    """

    def __init__(self, ttl: float = TTL_SECONDS) -> None:
        self.ttl = float(ttl)
        self._entries: "OrderedDict[tuple[Hashable, bytes], tuple[np.ndarray, Hashable, float]]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes of feature arrays held."""
        return self._bytes

    def get(self, settings: Hashable, digest: bytes) -> "tuple[np.ndarray, Hashable] | None":
        """The array and payload stored for ``digest`` under ``settings``, or None."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            entry = self._entries.get((settings, digest))
            if entry is None:
                return None
            array, payload, _ = entry
            self._entries[(settings, digest)] = (array, payload, now)
            self._entries.move_to_end((settings, digest))
            return array, payload

    def put(self, settings: Hashable, digest: bytes, array: "np.ndarray", payload: Hashable, max_bytes: int) -> None:
        """Store ``array`` (kept as given: do not modify it later) unless it alone exceeds ``max_bytes``.

        Least recently used entries are evicted until the cache holds at most ``max_bytes``.
        """
        size = int(array.nbytes)
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
            self._entries[(settings, digest)] = (array, payload, now)
            self._bytes += size

    def fetch(
        self,
        settings: Hashable,
        images: "Sequence[np.ndarray]",
        compute: "Callable[[list[np.ndarray]], list[tuple[np.ndarray, Hashable]]]",
        max_bytes: int,
        store: bool,
    ) -> "list[tuple[np.ndarray, Hashable]]":
        """Each image's ``(array, payload)``: cached ones are read, the others computed by one call of
        ``compute(missing_images)`` (one pair per image, in order) and, when ``store``, kept (fits store;
        predictions only read, so scoring a stream of images never fills the cache)."""
        import numpy as np

        digests = [image_digest(image) for image in images]
        found = [self.get(settings, d) for d in digests]
        missing = [i for i, hit in enumerate(found) if hit is None]
        if missing:
            for i, (array, payload) in zip(missing, compute([images[i] for i in missing])):
                found[i] = (array, payload)
                if store:
                    self.put(settings, digests[i], np.ascontiguousarray(array), payload, max_bytes)
        return found  # type: ignore[return-value]

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _expire(self, now: float) -> None:
        while self._entries:
            key, (array, _, used) = next(iter(self._entries.items()))
            if now - used <= self.ttl:
                break
            del self._entries[key]
            self._bytes -= int(array.nbytes)
