"""How rare a score is among held-out normals: one scale on which any experts' scores can be fused.

Two experts' raw scores share no scale, and even calibrated ones do not share a *spread*: on
the calibrated scale (0.5 = the largest held-out normal) PatchCore's normal images sit at
0.2-0.35 while the texture-wide expert's spread over 0-0.5, so a maximum of calibrated scores
ranks normal images by the noisier member. Here each member's score becomes the evidence
``-log10 P(normal score >= s)``, estimated from that member's held-out normal scores
(:class:`TailModel`):

- inside the held-out range, the conformal estimate ``(1 + #{held-out >= s}) / (n + 1)``;
- above the ``(k+1)``-th largest held-out score ``u`` (``k = max(5, 20 % of n)``), an
  exponential tail, ``(k + 1) / (n + 1) * exp(-(s - u) / beta)`` with ``beta`` the mean
  excess of the top ``k`` over ``u`` (the same tail :func:`myriad.calibration.tail_threshold`
  extrapolates), so scores beyond every held-out normal keep their order.

A member with no signal on an image gives it evidence of a typical normal (about
``log10 2``), so it adds no noise to an image another member flags; the fused evidence is the
largest member evidence. Pure numpy; used by :mod:`myriad.fusion`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Sequence

from myriad.calibration import TAIL_FRACTION, TAIL_MIN

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["TailModel", "heldout_evidence"]


@dataclass(frozen=True)
class TailModel:
    """The survival function of one member's held-out normal scores (see the module docstring)."""

    scores: tuple[float, ...]  # ascending

    @classmethod
    def fit(cls, scores: Sequence[float]) -> "TailModel":
        """From held-out normal scores (at least 2, finite)."""
        import numpy as np

        values = np.sort(np.asarray(scores, dtype=np.float64))
        if len(values) < 2 or not np.isfinite(values).all():
            raise ValueError(f"a tail model needs at least 2 finite held-out scores, got {len(values)}")
        return cls(tuple(float(v) for v in values))

    @cached_property
    def _values(self) -> "np.ndarray":
        """The scores as a float64 array (ascending)."""
        import numpy as np

        return np.asarray(self.scores, dtype=np.float64)

    @cached_property
    def _tail(self) -> tuple[int, float, float]:
        """``(k, u, beta)`` of the exponential tail."""
        import numpy as np

        values = self._values
        n = len(values)
        k = min(n - 1, max(TAIL_MIN, math.ceil(TAIL_FRACTION * n)))
        u = float(values[n - k - 1])
        beta = float(np.mean(values[n - k :] - u))
        spread = float(values[-1] - values[0])
        return k, u, max(beta, 1e-6 * max(spread, abs(u), 1e-12))

    def survival(self, x: "np.ndarray | float") -> "np.ndarray":
        """Estimated ``P(normal score >= x)`` for each ``x`` (float64 array, in ``(0, 1]``)."""
        import numpy as np

        values = self._values
        n = len(values)
        x = np.asarray(x, dtype=np.float64)
        k, u, beta = self._tail
        above = n - np.searchsorted(values, x, side="left")  # held-out scores >= x
        empirical = (1.0 + above) / (n + 1.0)
        tail = (k + 1.0) / (n + 1.0) * np.exp(-np.clip(x - u, 0.0, None) / beta)
        return np.where(x > u, np.minimum(tail, empirical), empirical)

    def evidence(self, x: "np.ndarray | float") -> "np.ndarray":
        """``-log10`` of :meth:`survival`: 0 for the lowest scores, growing without bound in the tail."""
        import numpy as np

        return -np.log10(np.maximum(self.survival(x), 1e-300))


def heldout_evidence(member_scores: Sequence[Sequence[float]]) -> "np.ndarray":
    """The fused evidence of each held-out normal: per member, its score under the tail model of
    the *other* held-out normals (so it is scored as a new image would be); the largest over members.

    ``member_scores``: one sequence per member, each with one score per held-out normal, in the
    same image order.
    """
    import numpy as np

    columns = [np.asarray(s, dtype=np.float64) for s in member_scores]
    n = len(columns[0])
    if any(len(c) != n for c in columns) or n < 3:
        raise ValueError(f"held-out evidence needs at least 3 normals scored by every member, got {[len(c) for c in columns]}")
    out = np.zeros(n)
    for column in columns:
        for i in range(n):
            others = np.delete(column, i)
            out[i] = max(out[i], float(TailModel.fit(others).evidence(column[i])))
    return out
