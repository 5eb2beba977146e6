"""Training curves as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def plot_losses(losses: Sequence[float], routes: Sequence[str], path: Path, window: int = 20) -> Path:
    """Plot per-step loss (light), its moving average per route (bold), saved atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from myriad.io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="0.8", lw=0.8, label="loss per step")
    values = np.asarray(losses, dtype=float)
    if len(values) >= 2:
        w = max(1, min(window, len(values) // 2))
        smooth = np.convolve(values, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], smooth, color="C0", lw=2, label=f"moving average ({w})")
    for i, route in enumerate(sorted(set(routes))):
        idx = [k for k, r in enumerate(routes) if r == route]
        ax.scatter(steps[idx], values[idx], s=4, color=f"C{i + 1}", label=f"route {route}", alpha=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("answer cross-entropy")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
