"""The process-wide cache of the global expert's window statistics (see :class:`myriad.api.FeatureCache`).

Holds, per fitted image, its ``W x D`` float32 statistics (every group's columns side by side)
with the groups' widths as payload, bounded by the config's ``feature_cache_mb``.
"""

from __future__ import annotations

from myriad.api import FeatureCache

#: The cache shared by every global expert of this process.
CACHE = FeatureCache()
