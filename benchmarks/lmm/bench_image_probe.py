"""What does the image add to the LMM's verdict? The shipped model with and without the image, same maps (by hand).

An inference-time probe of the paper's ablation (its Table 6 trains separate models; this one
does not): for each row the default expert is fitted per category and every test image is asked
the paper's question twice with the same calibrated map, once with its own image and once with a
uniform grey image in its place (the map tokens, TPG and VPG queries, unchanged; the image tokens
carry nothing). Reported per row: the image AUROC of the expert's score and of the LMM's verdict
margin with and without the image, and the calibrated verdict (rule ``either``, each variant
calibrated on its own held-out margins) against the expert. If the margins without the image rank
as well, the image tokens add nothing to the verdict. Rows are cached under ``OUT_rows/``; writes
``OUT.json`` and ``OUT.md``::

    .venv/bin/python benchmarks/lmm/bench_image_probe.py --row default:one_class=data/devset --out benchmarks/results/image_probe
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

GREY = 128


def _grey(images: Any) -> list:
    import numpy as np

    return [np.full_like(image, GREY) for image in images]


def run_row(name: str, setting: str, data: Path, expert: str, model: Any, cache: Path) -> dict:
    """Fit, probe every test image with and without its image, cache the row."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from myriad.evaluation.runner import EvalSettings, evaluate
    from myriad.lmm_verdict import heldout_flags, verdict_margins

    fits: list[dict] = []

    class Probe:
        name = "image-probe"
        needs_heldout = True

        def fitted(self, category: Any, detector: Any, normal_images: Any) -> None:
            held = detector.heldout_detections()
            record: dict[str, Any] = {"category": category.name, "flags": None, "with": [], "without": []}
            if held is not None:
                record["flags"] = heldout_flags(held)
                record["with"] = verdict_margins(model, normal_images, held)
                record["without"] = verdict_margins(model, _grey(normal_images), held)
            fits.append(record)

        def process(self, category: Any, samples: Any, images: Any, detections: Any, records: Any) -> None:
            with_image = verdict_margins(model, images, detections)
            without = verdict_margins(model, _grey(images), detections)
            for record, a, b in zip(records, with_image, without):
                record.extra["margin_with_image"] = round(a, 4)
                record.extra["margin_without_image"] = round(b, 4)

        def metrics(self, records: Any) -> dict:
            return {}

    k_shot = None if setting == "one_class" else int(setting[:-4])
    settings = EvalSettings(expert=expert, data=data, k_shot=k_shot, examples=0, progress=False)
    started = time.perf_counter()
    result = evaluate(settings, steps=[Probe()])
    row = {
        "name": name, "setting": setting, "data": str(data), "expert": expert,
        "seconds": round(time.perf_counter() - started, 1), "fits": fits,
        "records": [{"category": r.category, "label": r.label, "defect": r.defect, "raw_score": r.raw_score,
                     "expert": bool(r.anomalous), "with": r.extra["margin_with_image"],
                     "without": r.extra["margin_without_image"]} for r in result.records],
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(row))
    tmp.replace(cache)
    return row


def _auroc(labels: list[int], scores: list[float], categories: list[str]) -> float | None:
    """Mean over categories of the image AUROC (None where a category lacks either class)."""
    from sklearn.metrics import roc_auc_score

    values = []
    for name in dict.fromkeys(categories):
        pairs = [(y, s) for y, s, c in zip(labels, scores, categories) if c == name]
        ys = [y for y, _ in pairs]
        if 0 < sum(ys) < len(ys):
            values.append(float(roc_auc_score(ys, [s for _, s in pairs])))
    return sum(values) / len(values) if values else None


def summarise(row: dict) -> dict:
    """AUROCs and the calibrated ``either`` verdict with and without the image."""
    from myriad.verdict import calibrate_verdict

    records = row["records"]
    labels = [r["label"] for r in records]
    categories = [r["category"] for r in records]
    out: dict[str, Any] = {
        "auroc_expert": _auroc(labels, [r["raw_score"] for r in records], categories),
        "auroc_with_image": _auroc(labels, [r["with"] for r in records], categories),
        "auroc_without_image": _auroc(labels, [r["without"] for r in records], categories),
    }
    calibrations = {f["category"]: f for f in row["fits"]}
    for variant in ("with", "without"):
        decisions = []
        for r in records:
            fit = calibrations[r["category"]]
            cal = calibrate_verdict(fit[variant], fit["flags"]) if fit["flags"] is not None else None
            decisions.append(cal.decide(r["expert"], r[variant], None)[0] if cal else r["expert"])
        out[f"balanced_{variant}_image"] = _balanced(labels, decisions)
        out[f"added_{variant}_image"] = sum(d and not r["expert"] and r["label"] == 1 for d, r in zip(decisions, records))
    out["balanced_expert"] = _balanced(labels, [r["expert"] for r in records])
    return out


def _balanced(labels: list[int], decisions: list[bool]) -> float:
    positives = [d for d, y in zip(decisions, labels) if y]
    negatives = [d for d, y in zip(decisions, labels) if not y]
    return 0.5 * (sum(positives) / len(positives) + 1 - sum(negatives) / len(negatives))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", action="append", required=True, help="NAME:one_class=DATA (repeatable)")
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument("--expert", default="patchcore+global")
    parser.add_argument("--lmm", default="mini")
    args = parser.parse_args()
    out = Path(args.out)
    from myriad.inspection import load_lmm

    model = load_lmm(args.lmm, "cpu", "auto")
    lines = ["# What the image adds to the LMM's verdict (inference-time probe)", "",
             f"Expert {args.expert}, Myriad-mini ({args.lmm}), machine {platform.machine()}. The same calibrated maps, "
             f"the test image or a uniform grey image ({GREY}) in its place. AUROC: mean over categories; balanced: "
             "accuracy of the verdict (rule `either`, each variant calibrated on its own held-out margins).", "",
             "| row | AUROC expert | AUROC margin, with image | AUROC margin, grey image | balanced expert | "
             "balanced `either`, with image | balanced `either`, grey image | catches added with / without |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    summaries = []
    for spec in args.row:
        head, _, data = spec.partition("=")
        name, _, setting = head.partition(":")
        cache = out.parent / f"{out.name}_rows" / f"{name}_{setting}_{args.expert.replace('+', '-')}.json"
        row = run_row(name, setting, Path(data), args.expert, model, cache)
        s = summarise(row)
        summaries.append({"name": name, "setting": setting, "seconds": row["seconds"], **s})
        f = lambda v: "-" if v is None else f"{v:.3f}"
        lines.append(f"| {name}, {setting.replace('_', '-')} | {f(s['auroc_expert'])} | {f(s['auroc_with_image'])} | "
                     f"{f(s['auroc_without_image'])} | {f(s['balanced_expert'])} | {f(s['balanced_with_image'])} | "
                     f"{f(s['balanced_without_image'])} | {s['added_with_image']} / {s['added_without_image']} |")
        print(lines[-1], flush=True)
    Path(f"{out}.json").write_text(json.dumps({"summaries": summaries}, indent=1))
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
