"""The process-wide cache of PatchCore's patch features (see :class:`myriad.api.FeatureCache`).

Holds, per fitted image, its ``h*w x D`` float32 patch rows with the grid ``(h, w)`` as payload,
bounded by the config's ``feature_cache_mb``.
"""

from __future__ import annotations

from myriad.api import FeatureCache, image_digest

__all__ = ["CACHE", "image_digest"]

#: The cache shared by every PatchCore expert of this process.
CACHE = FeatureCache()
