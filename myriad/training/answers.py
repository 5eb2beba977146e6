"""Training answers: the paper's Yes/No sentences, and where the defect is (from the anomaly's mask).

The location question teaches the LMM to read *where* the expert's map points, so a follow-up
"Where is the defect in the image?" gets a grounded answer. Locations are the cell of a 3 x 3 grid
that holds most of the defect's pixels, named as people say them ("top left", "center", "bottom").
Every answer still starts with Yes / No, so the documented parse rule reads its verdict.
"""

from __future__ import annotations

import numpy as np

from myriad.lmm.prompting import ANSWER_ANOMALOUS, ANSWER_NORMAL

__all__ = ["LOCATION_QUESTION", "REGIONS", "answer_for", "defect_region", "grid_cuts", "location_answer", "region_at"]

#: The instruction of the location question (training and evaluation use this exact text).
LOCATION_QUESTION = "Where is the defect in the image?"
#: Names of the 3 x 3 grid cells, row by row.
REGIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)


def defect_region(mask: np.ndarray) -> str | None:
    """The 3 x 3 cell holding the most defect pixels of ``mask`` (H x W, > 0 = defect); None if empty."""
    m = np.asarray(mask, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {m.shape}")
    m = m > 0
    if not m.any():
        return None
    rows, cols = (_grid_slices(n) for n in m.shape)
    counts = np.array([[m[r, c].sum() for c in cols] for r in rows])
    row, col = np.unravel_index(int(np.argmax(counts)), counts.shape)
    return REGIONS[row][col]


def grid_cuts(n: int) -> tuple[int, int]:
    """Where the 3 x 3 grid cuts a side of ``n`` pixels: the cells are ``[0, a)``, ``[a, b)`` and ``[b, n)``.

    Sized as ``np.array_split`` sizes three parts: the first ``n % 3`` cells are one pixel longer.
    """
    base, extra = divmod(int(n), 3)
    first = base + (extra > 0)
    return first, first + base + (extra > 1)


def _grid_slices(n: int) -> tuple[slice, slice, slice]:
    a, b = grid_cuts(n)
    return slice(0, a), slice(a, b), slice(b, None)


def region_at(row: int, col: int, shape: tuple[int, ...]) -> str:
    """The name of the 3 x 3 cell holding pixel (``row``, ``col``) of an H x W ``shape``: the cells of
    :func:`defect_region`, so a one-pixel mask there has the same region. Out-of-range indices are clamped."""
    index = []
    for position, n in zip((row, col), shape[:2]):
        a, b = grid_cuts(n)
        p = min(max(int(position), 0), int(n) - 1)
        index.append(0 if p < a else 1 if p < b else 2)
    return REGIONS[index[0]][index[1]]


def location_answer(region: str | None) -> str:
    """``Yes, there exists anomalies in the top left of the image.`` / the normal answer when ``region`` is None."""
    if region is None:
        return ANSWER_NORMAL
    return f"Yes, there exists anomalies in the {region} of the image."


def answer_for(anomalous: bool, mask: np.ndarray | None, ask_location: bool) -> str:
    """The training answer of an item: the paper's sentence, or with ``ask_location`` where the defect is.

    An anomalous item without a usable mask answers the paper's sentence (no location to teach).
    """
    if not anomalous:
        return ANSWER_NORMAL
    if not ask_location or mask is None:
        return ANSWER_ANOMALOUS
    region = defect_region(mask)
    return ANSWER_ANOMALOUS if region is None else location_answer(region)
