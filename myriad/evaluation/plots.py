"""Evaluation plots rendered to PNG bytes (matplotlib's Agg canvas: no display, no pyplot state)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from matplotlib.figure import Figure

    from myriad.evaluation.records import Example

__all__ = ["roc_points", "roc_png", "histograms_png", "examples_png"]


def roc_points(labels: Sequence[int], scores: Sequence[float]) -> tuple["np.ndarray", "np.ndarray"]:
    """``(fpr, tpr)`` of the ROC curve over all distinct score thresholds, from (0, 0) to (1, 1)."""
    import numpy as np

    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = np.cumsum(~y)[last_of_tie]
    tpr = np.r_[0.0, tps / max(int(tps[-1]), 1)]
    fpr = np.r_[0.0, fps / max(int(fps[-1]), 1)]
    return fpr, tpr


def _png(fig: "Figure", dpi: int = 90) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def roc_png(curves: Sequence[tuple[str, Sequence[int], Sequence[float]]], title: str = "") -> bytes:
    """One axes with the image-level ROC curve of each ``(name, labels, scores)``."""
    from matplotlib.figure import Figure

    from myriad.metrics import image_auroc

    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    for name, labels, scores in curves:
        if len(set(int(v) for v in labels)) < 2:
            continue
        fpr, tpr = roc_points(labels, scores)
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} ({image_auroc(labels, scores):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(title or "Image-level ROC (AUROC)", fontsize=10)
    ax.set_aspect("equal")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def histograms_png(items: Sequence[tuple[str, Sequence[int], Sequence[float], float | None]], title: str = "") -> bytes:
    """Per category, raw image scores of normal vs anomalous test images and the threshold.

    ``items`` are ``(name, labels, raw_scores, threshold)``; the threshold (raw units) is the
    calibrated decision threshold, drawn as a dashed line.
    """
    import math

    import numpy as np
    from matplotlib.figure import Figure

    n = max(len(items), 1)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.6 * cols, 2.8 * rows))
    for index, (name, labels, scores, threshold) in enumerate(items):
        ax = fig.add_subplot(rows, cols, index + 1)
        y = np.asarray(labels, dtype=bool)
        s = np.asarray(scores, dtype=np.float64)
        values = s if threshold is None else np.r_[s, threshold]
        low, high = float(values.min()), float(values.max())
        bins = np.linspace(low, high if high > low else low + 1.0, 21)
        if (~y).any():
            ax.hist(s[~y], bins=bins, alpha=0.6, color="tab:green", label=f"normal ({int((~y).sum())})")
        if y.any():
            ax.hist(s[y], bins=bins, alpha=0.6, color="tab:red", label=f"anomalous ({int(y.sum())})")
        if threshold is not None:
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("raw image score", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(title or "Image scores: normal vs anomalous", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def examples_png(examples: Sequence["Example"], title: str = "", panel_height: int = 224) -> bytes:
    """Grid with one row per example: image | calibrated map overlay | ground-truth mask.

    Composed with Pillow (fast, exact pixels); each panel is ``panel_height`` pixels high
    with the image's aspect ratio and a caption underneath.
    """
    import io

    import numpy as np
    from PIL import Image

    from myriad.evaluation.overlay import overlay

    gap = 6
    rows: list[np.ndarray] = []
    for ex in examples:
        height, width = ex.image.shape[:2]
        panel_width = max(1, round(panel_height * width / height))
        image = _resize_rgb(ex.image, panel_height, panel_width)
        if ex.mask is None:
            mask_rgb = np.full((panel_height, panel_width, 3), 40, dtype=np.uint8)
        else:
            small = np.asarray(Image.fromarray(ex.mask.astype(np.uint8) * 255).resize((panel_width, panel_height), Image.Resampling.NEAREST))
            mask_rgb = np.repeat(small[..., None], 3, axis=2)
        mask_rgb = mask_rgb.copy()
        mask_rgb[[0, -1], :] = 128  # frame: a whole-image mask is not blank paper
        mask_rgb[:, [0, -1]] = 128
        verdict = "anomalous" if ex.anomalous else "normal"
        correct = "ok" if ex.anomalous == bool(ex.label) else "WRONG"
        captions = [
            ex.defect if ex.label else "good (normal)",
            f"score {ex.score:.2f}: {verdict} ({correct})",
            ("ground truth (whole image)" if ex.mask.all() else "ground truth")
            if ex.mask is not None and ex.label
            else ("no defect" if not ex.label else "no mask"),
        ]
        panels = [image, overlay(image, ex.calibrated_map), mask_rgb]
        captioned = [np.concatenate([p, _text_band([c], p.shape[1], 13)], axis=0) for p, c in zip(panels, captions)]
        spacer = np.full((captioned[0].shape[0], gap, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([captioned[0], spacer, captioned[1], spacer, captioned[2]], axis=1))
    if not rows:
        rows.append(np.full((40, 3 * panel_height, 3), 255, dtype=np.uint8))
    grid_width = max(r.shape[1] for r in rows)
    third = (grid_width - 2 * gap) // 3
    header_cells = [_text_band([h], third, 14) for h in ("image", "calibrated map (outline > 0.5)", "ground-truth mask")]
    blank = np.full((header_cells[0].shape[0], gap, 3), 255, dtype=np.uint8)
    header = np.concatenate([header_cells[0], blank, header_cells[1], blank, header_cells[2]], axis=1)
    parts = [_text_band([title], grid_width, 15)] if title else []
    parts.append(_pad_width(header, grid_width))
    for row in rows:
        parts.append(np.full((gap, grid_width, 3), 255, dtype=np.uint8))
        parts.append(_pad_width(row, grid_width))
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(parts, axis=0)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _resize_rgb(image: "np.ndarray", height: int, width: int) -> "np.ndarray":
    import numpy as np
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def _pad_width(block: "np.ndarray", width: int) -> "np.ndarray":
    import numpy as np

    if block.shape[1] >= width:
        return block[:, :width]
    pad = np.full((block.shape[0], width - block.shape[1], 3), 255, dtype=np.uint8)
    return np.concatenate([block, pad], axis=1)


def _text_band(lines: Sequence[str], width: int, font_size: int) -> "np.ndarray":
    """White band with black text lines (cut to the width), ``width`` pixels wide."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=font_size)
    except (TypeError, OSError):  # Pillow without FreeType
        font = ImageFont.load_default()
    line_height = int(font_size * 1.35)
    band = Image.new("RGB", (max(width, 1), line_height * len(lines) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        text = line
        while text and draw.textlength(text, font=font) > width - 6:
            text = text[:-2] + "…" if len(text) > 2 else ""
        draw.text((3, 2 + i * line_height), text, fill=(0, 0, 0), font=font)
    return np.asarray(band)
