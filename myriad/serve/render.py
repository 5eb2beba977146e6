"""Render an inspection's heat-map overlay as PNG bytes (the same picture ``myriad inspect`` writes)."""

from __future__ import annotations

import io
from typing import Any


def overlay_png(result: Any, caption: bool = False) -> bytes:
    """The overlay of an :class:`~myriad.inspection.InspectionResult` as PNG bytes.

    ``caption`` adds the decision, score and answer in a band under the image
    (:meth:`~myriad.inspection.InspectionResult.caption`: a degenerate answer of Myriad's is
    replaced by the grounded one). The map drawn is the one the findings were measured on.
    """
    from PIL import Image

    from myriad.evaluation.overlay import overlay

    pixels = overlay(result.pixels, result.overlay_map(), caption=result.caption() if caption else None)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
