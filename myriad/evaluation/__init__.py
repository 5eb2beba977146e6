"""Evaluation of experts on MVTec-AD-layout data: runner, report files, plots and overlays.

* :func:`~myriad.evaluation.runner.evaluate` runs an expert (fit + calibration through
  :class:`myriad.detector.Detector`, then prediction) and returns an
  :class:`~myriad.evaluation.records.EvalResult` with per-image records;
* :func:`~myriad.evaluation.report.write_outputs` writes report.json, report.md, the
  predictions JSONL and the PNG plots, atomically and only at the end;
* :func:`~myriad.evaluation.overlay.overlay` draws a calibrated map over an image (also
  used by ``myriad inspect``).
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "EvalSettings": "myriad.evaluation.runner",
    "EvalStep": "myriad.evaluation.runner",
    "evaluate": "myriad.evaluation.runner",
    "ImageRecord": "myriad.evaluation.records",
    "EvalResult": "myriad.evaluation.records",
    "build_report": "myriad.evaluation.report",
    "markdown": "myriad.evaluation.report",
    "write_outputs": "myriad.evaluation.report",
    "overlay": "myriad.evaluation.overlay",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'myriad.evaluation' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
