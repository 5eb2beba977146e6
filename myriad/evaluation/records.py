"""What an evaluation keeps: one record per test image and run, examples for plots, results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["ImageRecord", "Example", "RunResult", "CategoryResult", "EvalResult"]


@dataclass
class ImageRecord:
    """One test image in one run: labels, the expert's raw and calibrated score and decision.

    ``extra`` is for evaluation steps added later (e.g. an LMM's text answer and whether it
    is right: ``{"lmm_answer": "...", "lmm_anomalous": True}``); it is written to the
    predictions JSONL with the rest.
    """

    category: str
    run: int
    path: str
    label: int
    defect: str
    raw_score: float
    score: float
    anomalous: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form (one line of the predictions JSONL)."""
        data = {
            "category": self.category,
            "run": self.run,
            "path": self.path,
            "label": self.label,
            "defect": self.defect,
            "raw_score": self.raw_score,
            "score": self.score,
            "anomalous": self.anomalous,
            "correct": self.anomalous == bool(self.label),
        }
        data.update(self.extra)
        return data


@dataclass
class Example:
    """A test image kept for the overlay grid (downsized): image, calibrated map, mask."""

    path: str
    label: int
    defect: str
    image: "np.ndarray"
    calibrated_map: "np.ndarray"
    mask: "np.ndarray | None"
    score: float
    anomalous: bool


@dataclass
class RunResult:
    """Metrics and costs of one category in one run (one draw of references)."""

    category: str
    run: int
    seed: int
    metrics: dict[str, float | None]
    fit_seconds: float
    ms_per_image: float
    num_fit: int
    num_test: int
    num_anomalous: int
    calibration: dict[str, Any]
    references: list[str] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class CategoryResult:
    """All runs of one category, plus what its plots need (from the first run)."""

    name: str
    root: str
    num_train: int
    has_masks: bool
    runs: list[RunResult] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    peak_rss_mb: float = 0.0


@dataclass
class EvalResult:
    """Everything ``myriad eval`` reports."""

    expert: str
    mode: str
    config: dict[str, Any]
    settings: dict[str, Any]
    categories: list[CategoryResult]
    records: list[ImageRecord]
    total_seconds: float
    peak_rss_mb: float
    peak_gpu_mb: float | None = None
    expert_info: dict[str, Any] = field(default_factory=dict)
