"""Nearest neighbours that leave a group out: held-out scores from one memory bank (pure numpy).

A memory-bank expert (such as PatchCore) scores an image by the distance of its patches to
the nearest rows of a bank built from the normal images. To score one of those normal images
*as if held out*, its patches must be compared with the bank without the rows its own image
(or every tile of its photo: a *group*) put there: :func:`nearest_outside_group` asks the
bank for a few more neighbours than needed and keeps the nearest ones owned by another group,
widening the search only for the rows that need it. One search per batch replaces the k
refits of k-fold calibration, and each normal is compared with everything else, as a test
image is. Plugins reach it as ``myriad.api.nearest_outside_group``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["nearest_outside_group"]


def nearest_outside_group(
    search: Callable[["np.ndarray", int], tuple["np.ndarray", "np.ndarray"]],
    rows: "np.ndarray",
    row_group: "np.ndarray",
    owner_group: "np.ndarray",
    k: int = 1,
    first_width: int = 32,
) -> "np.ndarray | None":
    """Distances from each of ``rows`` to its ``k`` nearest bank rows owned by another group.

    ``search(queries, width)`` returns the ``width`` nearest bank rows of each query as
    ``(distances, indices)``, nearest first (a FAISS index's ``search``); ``row_group[i]`` is the
    group of query ``i``, ``owner_group[j]`` the group that put bank row ``j`` there. Returns a
    ``len(rows) x k`` float32 array, nearest first, or None when some row's group owns all but
    fewer than ``k`` rows of the bank.
    """
    import numpy as np

    bank_size = len(owner_group)
    out = np.empty((len(rows), k), dtype=np.float32)
    todo = np.arange(len(rows))
    width = min(bank_size, k + first_width)
    while len(todo):
        distances, nearest = search(rows[todo], width)
        foreign = owner_group[nearest] != np.asarray(row_group)[todo, None]
        enough = foreign.sum(axis=1) >= k
        order = np.argsort(~foreign, axis=1, kind="stable")[:, :k]  # foreign rows first, nearest first
        out[todo[enough]] = np.take_along_axis(distances, order, axis=1)[enough]
        todo = todo[~enough]
        if len(todo) and width == bank_size:
            return None
        width = min(bank_size, width * 8)
    return out
