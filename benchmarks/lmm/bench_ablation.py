"""What the image adds: the paper's ablation (its Table 6) on our benchmarks, one expert fit for every model.

Each ``--lmm NAME=WEIGHTS`` is a model trained by one of ``benchmarks/train/ablation/*.toml``: map
tokens only (the TPG), image tokens only (the VE-guided encoder: VPG + LoRRA), both. Every model answers
the same test images over the same calibrated maps of the same expert fit (the expert is fitted once per
category and row, every model's verdict is calibrated on the same held-out normals), so the rows differ
only in the model. Per row and model: the AUROC of the LMM's margin (mean over categories, beside the
expert's score), the paper's raw answer (``lmm``) and the default verdict (``either``) as in
``bench_verdict.py``: TPR, false alarms, balanced accuracy, vetoes, added catches, McNemar p against the
expert. Rows are cached under ``OUT_rows/`` (resumable); writes ``OUT.json`` and ``OUT.md``::

    .venv/bin/python benchmarks/lmm/bench_ablation.py --row default:one_class=data/devset \\
        --row realistic:one_class=data/realistic \\
        --lmm tpg=runs/ablation-tpg/myriad_weights.safetensors --lmm vpg=... --lmm both=... \\
        --out benchmarks/results/ablation
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_verdict import _row_spec, summarise  # noqa: E402


def _steps(models: dict[str, Any], calibrations: dict[str, list[dict]]) -> list[Any]:
    """One evaluation step per model, each writing its own keys (``NAME:lmm_margin`` ...) into the records."""
    from myriad.evaluation.lmm_step import LMMStep
    from myriad.lmm_verdict import heldout_flags

    class Step(LMMStep):
        def fitted(self, category: Any, detector: Any, normal_images: Any) -> None:
            super().fitted(category, detector, normal_images)
            held = detector.heldout_detections()
            calibrations[self.name].append({
                "category": category.name,
                "calibration": self.calibration.to_dict() if self.calibration else None,
                "expert_rate": self.expert_rate,
                "heldout_margins": self.heldout_margins,
                "heldout_flags": heldout_flags(held) if held is not None else None,
                "seconds": round(self.calibration_seconds, 3),
            })

        def metrics(self, records: Any) -> dict:
            return {}

    return [Step(model, name=name, extra_prefix=f"{name}:") for name, model in models.items()]


def run_row(name: str, setting: str, data: Path, expert: str, draws: int, models: dict[str, Any], cache: Path) -> dict:
    """One row: the expert fitted once per category (and draw), every model's answers and calibration (cached)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from myriad.evaluation.runner import EvalSettings, evaluate

    calibrations: dict[str, list[dict]] = {m: [] for m in models}
    k_shot = None if setting == "one_class" else int(setting[:-4])
    settings = EvalSettings(expert=expert, data=data, k_shot=k_shot, runs=1 if k_shot is None else draws,
                            examples=0, progress=False)
    started = time.perf_counter()
    result = evaluate(settings, steps=_steps(models, calibrations))
    row = {
        "name": name, "setting": setting, "data": str(data), "expert": expert,
        "seconds": round(time.perf_counter() - started, 1), "calibrations": calibrations,
        "records": [{"category": r.category, "run": r.run, "path": r.path, "label": r.label, "defect": r.defect,
                     "score": r.score, "expert": bool(r.anomalous),
                     **{k: v for k, v in r.extra.items() if ":" in k}} for r in result.records],
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(row))
    tmp.replace(cache)
    return row


def model_view(row: dict, model: str) -> dict:
    """The row as ``bench_verdict.summarise`` reads it, for one model."""
    keys = ("lmm_decision", "lmm_margin", "verdict", "verdict_source")
    records = [{**{k: v for k, v in r.items() if ":" not in k}, **{k: r[f"{model}:{k}"] for k in keys}} for r in row["records"]]
    return {**row, "calibrations": row["calibrations"][model], "records": records}


def mean_auroc(records: list[dict], key: str) -> float | None:
    """The image AUROC of ``key`` per category (and run), averaged."""
    from myriad.metrics import image_auroc

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["category"], r["run"]), []).append(r)
    values = [image_auroc([r["label"] for r in g], [r[key] for r in g]) for g in groups.values()
              if 0 < sum(r["label"] for r in g) < len(g)]
    return sum(values) / len(values) if values else None


def markdown(rows: list[dict], table: list[dict], about: str) -> str:
    """The report: one line per row and model."""
    f = lambda v: "-" if v is None else f"{v:.3f}"
    lines = ["# What the image adds: the paper's ablation (Table 6) on our benchmarks", "", about, "",
             "| row | model | AUROC expert score | AUROC LMM margin | `lmm` TPR / false alarms / balanced | "
             "`either` TPR / false alarms / balanced | `either` added catches | `lmm` vetoes | p (`lmm` below expert) |",
             "|---|---|---:|---:|---|---|---:|---:|---:|"]
    for t in table:
        lm, ei = t["rules"]["lmm"], t["rules"]["either"]
        lines.append(f"| {t['row']} | {t['model']} | {f(t['auroc_expert'])} | {f(t['auroc_margin'])} | "
                     f"{f(lm['tpr'])} / {f(lm['false_alarm_rate'])} / {f(lm['balanced'])} | "
                     f"{f(ei['tpr'])} / {f(ei['false_alarm_rate'])} / {f(ei['balanced'])} | "
                     f"{ei['added_catches']} | {lm['vetoed_true_alarms']} | {lm['p_below_expert']:.3f} |")
    lines += ["", "Expert alone per row (balanced accuracy): " + ", ".join(
        f"{t['row']} {f(t['rules']['expert']['balanced'])}" for t in table if t["model"] == table[0]["model"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", action="append", required=True, help="NAME:one_class=DATA or NAME:4shot=DATA (repeatable)")
    parser.add_argument("--lmm", action="append", required=True, help="NAME=WEIGHTS (repeatable), e.g. tpg=runs/ablation-tpg/...")
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument("--expert", default="patchcore+global")
    parser.add_argument("--draws", type=int, default=1, help="few-shot reference draws per category")
    parser.add_argument("--note", default="", help="a sentence for the report (e.g. how the models were trained)")
    args = parser.parse_args()
    out = Path(args.out)
    from myriad.inspection import load_lmm

    models = {}
    for spec in args.lmm:
        name, _, weights = spec.partition("=")
        if not weights or ":" in name:
            raise SystemExit(f"--lmm {spec!r}: expected NAME=WEIGHTS")
        models[name] = load_lmm(weights, "cpu", "auto")
    rows, table = [], []
    for spec in args.row:
        name, setting, data = _row_spec(spec)
        cache = out.parent / f"{out.name}_rows" / f"{name}_{setting}.json"
        row = run_row(name, setting, data, args.expert, args.draws, models, cache)
        rows.append(row)
        print(f"{name} {setting}: {row['seconds']:.0f} s", flush=True)
        for model in models:
            view = model_view(row, model)
            summary = summarise(view)
            table.append({"row": f"{name}, {setting.replace('_', '-')}", "model": model,
                          "auroc_expert": mean_auroc(view["records"], "score"),
                          "auroc_margin": mean_auroc(view["records"], "lmm_margin"), **summary})
    named = ", ".join(f"{name} ({spec.partition('=')[2]})" for name, spec in zip(models, args.lmm))
    about = (f"Expert {args.expert} (fitted once per category and row; every model reads the same calibrated maps), "
             f"models {named}, "
             f"machine {platform.machine()}. {args.note}").strip()
    Path(f"{out}.json").write_text(json.dumps({"about": about, "table": table}, indent=1))
    Path(f"{out}.md").write_text(markdown(rows, table, about))
    print(markdown(rows, table, about))


if __name__ == "__main__":
    main()
