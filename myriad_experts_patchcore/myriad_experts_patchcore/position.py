"""Per-position baseline of patch scores, fitted on held-out normal grids (pure functions).

A CNN's features near the image border (zero padding, fewer neighbours in the
receptive field) have fewer close matches in the memory bank than features at the
centre, so a normal image's patch scores are higher along the border: measured on
the visible dev set (grass, 200 normals, each scored leave-one-out), the median
held-out score was 284 at the border against 169 at the centre. A small defect in
the centre then scores below a normal border, and the image score (the largest
patch score) ranks it badly.

The baseline fitted here is, at every grid position, the median and the median
absolute deviation of the fitted images' held-out patch scores (each image scored
against the bank without its own patches). A test grid is compared with it
position by position, ``(score - median) / scale``, so a patch is as anomalous as
it is rare *at its position* among normal images. ``scale`` is the deviation,
floored at half its mean over positions, so a position where every normal scored
alike cannot turn a small difference into a large one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: The floor of a position's scale, as a fraction of the mean scale over positions.
SCALE_FLOOR = 0.5


@dataclass
class PositionBaseline:
    """Median and scale of normal patch scores at each of ``h x w`` grid positions."""

    median: "np.ndarray"
    scale: "np.ndarray"

    @property
    def grid(self) -> tuple[int, int]:
        """The ``(h, w)`` grid the baseline was fitted on."""
        return (int(self.median.shape[0]), int(self.median.shape[1]))

    def apply(self, scores: "np.ndarray") -> "np.ndarray":
        """``B x h x w`` patch scores -> ``(scores - median) / scale`` (float32)."""
        import numpy as np

        return ((scores - self.median[None]) / self.scale[None]).astype(np.float32, copy=False)


def fit_position_baseline(grids: "np.ndarray") -> PositionBaseline:
    """The baseline of ``N x h x w`` held-out normal patch-score grids (N >= 2)."""
    import numpy as np

    grids = np.asarray(grids, dtype=np.float64)
    if grids.ndim != 3 or grids.shape[0] < 2:
        raise ValueError(f"a position baseline needs N >= 2 grids of h x w scores, got shape {grids.shape}")
    median = np.median(grids, axis=0)
    spread = np.median(np.abs(grids - median[None]), axis=0)
    floor = max(float(spread.mean()) * SCALE_FLOOR, float(np.finfo(np.float32).tiny))
    return PositionBaseline(median=median.astype(np.float32), scale=np.maximum(spread, floor).astype(np.float32))
