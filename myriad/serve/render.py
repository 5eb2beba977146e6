"""Render an inspection's heat-map overlay as PNG bytes (the same picture ``myriad inspect`` writes)."""

from __future__ import annotations

import io
from typing import Any


def overlay_caption(result: Any) -> str:
    """``anomalous (0.83): <answer>``, as under the overlays of ``myriad inspect``."""
    caption = f"{result.decision} ({result.score:.2f})"
    return caption + (f": {result.answer}" if result.answer else "")


def overlay_png(result: Any, caption: bool = False) -> bytes:
    """The overlay of an :class:`~myriad.inspection.InspectionResult` as PNG bytes.

    ``caption`` adds the decision, score and answer in a band under the image.
    """
    from PIL import Image

    from myriad.evaluation.overlay import overlay

    pixels = overlay(result.pixels, result.anomaly_map, caption=overlay_caption(result) if caption else None)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
