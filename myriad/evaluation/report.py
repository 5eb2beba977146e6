"""Turn an :class:`~myriad.evaluation.records.EvalResult` into report.json, report.md, JSONL and PNGs.

Files for ``--output DIR/NAME.json``:

* ``DIR/NAME.json``: the report (written last: its presence means the set is complete);
* ``DIR/NAME.md``: the same numbers as a Markdown table, with the plots linked;
* ``DIR/NAME_predictions.jsonl``: one line per test image and run (scores, decision, extras);
* ``DIR/NAME_plots/``: ``roc.png``, ``histograms.png`` and ``examples_<category>.png``.

Everything is rendered in memory first and each file is written atomically, so an
interrupted or failed evaluation never leaves a half-written report.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from myriad.errors import ConfigError
from myriad.evaluation.records import CategoryResult, EvalResult
from myriad.evaluation.runner import METRIC_KEYS

__all__ = ["build_report", "markdown", "output_paths", "write_outputs", "REPORT_FORMAT"]

REPORT_FORMAT = "myriad-eval/1"
COST_KEYS = ("fit_seconds", "ms_per_image")
#: (key, column header) of the Markdown table.
TABLE_COLUMNS = (
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("aupro", "AUPRO"),
    ("f1_max", "F1-max"),
    ("expert_accuracy", "expert acc."),
    ("fit_seconds", "fit s"),
    ("ms_per_image", "ms/img"),
)


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _mean(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(present) / len(present) if present else None


def _std(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(present) < 2:
        return None
    mean = sum(present) / len(present)
    return math.sqrt(sum((v - mean) ** 2 for v in present) / (len(present) - 1))


def _metric_keys(categories: Sequence[CategoryResult]) -> list[str]:
    """The fixed metrics, then any added by evaluation steps (e.g. an LMM's ``accuracy``)."""
    keys = list(METRIC_KEYS)
    for category in categories:
        for run in category.runs:
            keys += [k for k, v in run.metrics.items() if k not in keys and (v is None or isinstance(v, (int, float)))]
    return keys


def _category_entry(category: CategoryResult, keys: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for key in keys:
        entry[key] = _mean([run.metrics.get(key) for run in category.runs])
    entry["fit_seconds"] = _mean([run.fit_seconds for run in category.runs])
    entry["ms_per_image"] = _mean([run.ms_per_image for run in category.runs])
    entry["peak_rss_mb"] = category.peak_rss_mb
    first = category.runs[0]
    entry.update(
        num_train=category.num_train,
        num_fit=first.num_fit,
        num_test=first.num_test,
        num_anomalous=first.num_anomalous,
        has_masks=category.has_masks,
    )
    if len(category.runs) > 1:
        entry["std"] = {key: _std([run.metrics.get(key) for run in category.runs]) for key in keys}
    notes = sorted({note for run in category.runs for note in run.notes})
    if notes:
        entry["notes"] = notes
    entry["runs"] = [
        {
            "run": run.run,
            "seed": run.seed,
            **{key: run.metrics.get(key) for key in keys},
            "fit_seconds": run.fit_seconds,
            "ms_per_image": run.ms_per_image,
            "calibration": run.calibration,
            **({"references": run.references} if run.references is not None else {}),
        }
        for run in category.runs
    ]
    return entry


def build_report(result: EvalResult, files: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report.json content (see the module docstring for the files it points to)."""
    from myriad import __version__

    keys = _metric_keys(result.categories)
    categories = {c.name: _category_entry(c, keys) for c in result.categories}
    mean: dict[str, Any] = {key: _mean([c[key] for c in categories.values()]) for key in (*keys, *COST_KEYS)}
    mean["peak_rss_mb"] = result.peak_rss_mb
    mean["num_categories"] = len(categories)
    settings = result.settings
    report = {
        "format": REPORT_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "myriad_version": __version__,
        "expert": result.expert,
        "expert_distribution": result.expert_info.get("distribution"),
        "expert_version": result.expert_info.get("version"),
        "mode": result.mode,
        "config": result.config,
        "k_shot": settings.get("k_shot"),
        "seed": settings.get("seed"),
        "runs": settings.get("runs"),
        "device": settings.get("device"),
        "data": settings.get("data"),
        "settings": settings,
        "metrics": keys,
        "categories": categories,
        "mean": mean,
        "peak_rss_mb": result.peak_rss_mb,
        "peak_gpu_mb": result.peak_gpu_mb,
        "total_seconds": result.total_seconds,
        "files": files or {},
    }
    return _clean(report)


def _fmt(value: Any, std: Any = None, digits: int = 3) -> str:
    if value is None:
        return "–"
    text = f"{value:.{digits}f}"
    if std is not None:
        text += f" ± {std:.{digits}f}"
    return text


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: settings, one table row per category and the mean, plot links."""
    keys = [k for k in report.get("metrics", []) if k not in dict(TABLE_COLUMNS) and k != "image_ap"]
    columns = list(TABLE_COLUMNS[:5]) + [(k, k) for k in keys] + list(TABLE_COLUMNS[5:])
    shot = f"{report['k_shot']}-shot" if report.get("k_shot") else "all training images"
    lines = [
        f"# Evaluation: `{report['expert']}` on `{report['data']}`",
        "",
        f"- mode: **{report['mode']}**, references: {shot}, seed {report['seed']}, runs {report['runs']}"
        + (f", device {report['device']}" if report.get("device") else ""),
        f"- config: `{json.dumps(report['config'], sort_keys=True)}`",
        "- image metrics from raw scores; `expert acc.` = decisions at the calibrated threshold "
        "(max held-out normal score over k folds; transductive experts: max score of the control normals "
        "scored inside each test batch); fit time includes the calibration folds",
        f"- peak RSS {_fmt(report['peak_rss_mb'], digits=0)} MiB, total {report['total_seconds']:.1f} s, "
        f"myriad {report['myriad_version']}, {report['created']}",
        "",
        "| category | " + " | ".join(header for _, header in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, entry in report["categories"].items():
        std = entry.get("std", {})
        digits = {"fit_seconds": 2, "ms_per_image": 1}
        cells = [_fmt(entry.get(k), std.get(k), digits.get(k, 3)) for k, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    mean = report["mean"]
    digits = {"fit_seconds": 2, "ms_per_image": 1}
    lines.append("| **mean** | " + " | ".join(f"**{_fmt(mean.get(k), None, digits.get(k, 3))}**" for k, _ in columns) + " |")
    if report["runs"] and report["runs"] > 1:
        lines += ["", f"Values are means over {report['runs']} runs (± sample standard deviation)."]
    notes = [f"{name}: {note}" for name, entry in report["categories"].items() for note in entry.get("notes", [])]
    if notes:
        lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    plots = report.get("files", {}).get("plots", [])
    if plots:
        lines += ["", "## Plots", ""]
        for path in plots:
            lines.append(f"![{Path(path).stem}]({path})")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def output_paths(output: str | Path) -> dict[str, Path]:
    """Where the report files go for ``--output``: json, md, predictions, plots folder."""
    output = Path(output)
    if output.suffix.lower() != ".json":
        raise ConfigError(f"--output {output}: the report file name must end in .json")
    if output.is_dir():
        raise ConfigError(f"--output {output}: is a folder; give a file name such as {output / 'report.json'}")
    stem = output.stem
    return {
        "json": output,
        "markdown": output.with_name(f"{stem}.md"),
        "predictions": output.with_name(f"{stem}_predictions.jsonl"),
        "plots": output.with_name(f"{stem}_plots"),
    }


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "category"


def render_plots(result: EvalResult) -> dict[str, bytes]:
    """PNG bytes by file name: ROC curves, score histograms, one example grid per category."""
    from myriad.evaluation.plots import examples_png, histograms_png, roc_png

    curves = []
    hists = []
    for category in result.categories:
        first = [r for r in result.records if r.category == category.name and r.run == 0]
        labels = [r.label for r in first]
        scores = [r.raw_score for r in first]
        curves.append((category.name, labels, scores))
        hists.append((category.name, labels, scores, category.runs[0].calibration.get("threshold")))
    suffix = f" (run 1 of {len(result.categories[0].runs)})" if result.categories and len(result.categories[0].runs) > 1 else ""
    pngs = {
        "roc.png": roc_png(curves, title=f"{result.expert}: image-level ROC (AUROC){suffix}"),
        "histograms.png": histograms_png(hists, title=f"{result.expert}: raw image scores{suffix}"),
    }
    for category in result.categories:
        if category.examples:
            title = f"{result.expert} on {category.name}: image | calibrated map | ground truth"
            pngs[f"examples_{_safe_name(category.name)}.png"] = examples_png(category.examples, title=title)
    return pngs


def write_outputs(result: EvalResult, output: str | Path, plots: bool = True) -> dict[str, Any]:
    """Render and write every file; report.json goes last. Returns the report dict."""
    from myriad.io import atomic_write_bytes, atomic_write_text

    paths = output_paths(output)
    folder = paths["json"].parent
    pngs = render_plots(result) if plots else {}
    plot_rel = [f"{paths['plots'].name}/{name}" for name in pngs]
    files = {
        "markdown": paths["markdown"].name,
        "predictions": paths["predictions"].name,
        "plots": plot_rel,
    }
    report = build_report(result, files=files)
    text = json.dumps(report, indent=2, allow_nan=False)
    md = markdown(report)
    jsonl = "".join(json.dumps(_clean(r.to_json()), allow_nan=False) + "\n" for r in result.records)

    folder.mkdir(parents=True, exist_ok=True)
    if pngs:
        paths["plots"].mkdir(parents=True, exist_ok=True)
        for stale in paths["plots"].glob("examples_*.png"):
            if stale.name not in pngs:
                stale.unlink()
        for name, data in pngs.items():
            atomic_write_bytes(paths["plots"] / name, data)
    atomic_write_text(paths["predictions"], jsonl)
    atomic_write_text(paths["markdown"], md)
    atomic_write_text(paths["json"], text + "\n")
    return report
