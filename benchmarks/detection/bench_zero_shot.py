"""Zero-shot on a dev set: MuSc as `myriad eval` runs it, the paper's settings beside the default (by hand).

Each category's whole test split is one batch (``myriad eval``'s default for a transductive
expert), scored with the host's 16 control normals, which also set the in-batch threshold.
Two settings of the same expert, in the same run:

- **paper**: both CNN stages (2, 3), LNAMD degrees 1, 3, 5, RsCIN ``[1, 2, 3]``, raw patch
  scores (``position_baseline="none"``): the previous release's defaults;
- **default**: stage 2, degree 3, no RsCIN, per-position robust z-scores over the batch.

Per category and family (local / texture-wide): image AUROC, detection at 1 % and 5 % false
alarms on the test normals, the calibrated decision (balanced accuracy, false alarms) and the
wall seconds of the whole category (fit + every batch). Writes ``OUT.json`` and ``OUT.md``::

    .venv/bin/python benchmarks/detection/bench_zero_shot.py --data data/visible --out benchmarks/results/zero_shot_visible
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

SETTINGS = {
    "paper": {"layers": [2, 3], "r_list": [1, 3, 5], "rscin_k": [1, 2, 3], "position_baseline": "none"},
    "default": {},
}
RATES = (0.01, 0.05)


def _family_metrics(labels: list[int], scores: list[float], decisions: list[bool]) -> dict[str, float | None]:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    y, s, d = np.asarray(labels), np.asarray(scores, dtype=float), np.asarray(decisions, dtype=bool)
    normals, defects = s[y == 0], s[y == 1]
    out: dict[str, float | None] = {"auroc": float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None}
    for rate in RATES:
        cut = float(np.quantile(normals, 1.0 - rate, method="higher"))
        out[f"det@{rate:.0%}"] = float((defects > cut).mean())
    detection, false_alarms = float(d[y == 1].mean()), float(d[y == 0].mean())
    out.update(detection=detection, false_alarms=false_alarms, balanced=(detection + 1.0 - false_alarms) / 2)
    return out


def run_category(data: Path, category: str, config: dict[str, Any], family_of: dict[str, str]) -> dict[str, Any]:
    """Evaluate one category with one setting; metrics per family and the wall time."""
    from myriad.evaluation.runner import EvalSettings, evaluate

    settings = EvalSettings(expert="musc", data=data, categories=(category,), config={**config, "progress": False},
                            examples=0, progress=False)
    started = time.perf_counter()
    result = evaluate(settings)
    seconds = time.perf_counter() - started
    rows = [(r.label, family_of.get("/".join(Path(r.path).parts[-4:]), "all"), r.raw_score, r.anomalous) for r in result.records]
    families = {}
    for family in sorted({f for label, f, _, _ in rows if label}):
        chosen = [(label, score, alarm) for label, f, score, alarm in rows if label == 0 or f == family]
        families[family] = _family_metrics(*map(list, zip(*chosen)))
    everything = [(label, score, alarm) for label, _, score, alarm in rows]
    families["all"] = _family_metrics(*map(list, zip(*everything)))
    return {"seconds": round(seconds, 1), "images": len(rows), "families": families}


def render(rows: dict[str, dict[str, dict]], meta: dict[str, str]) -> str:
    """The Markdown report: one row per category, setting and family, then the means."""
    lines = [f"# Zero-shot: {meta['data']}", "", meta["about"], ""]
    head = "| category | setting | family | AUROC | det@1% | det@5% | balanced | false alarms | wall s (category) |"
    lines += [head, "|" + "---|" * 3 + "---:|" * 6]
    means: dict[tuple[str, str], list[dict]] = {}
    for category, by_setting in rows.items():
        for name, result in by_setting.items():
            for family, m in result["families"].items():
                means.setdefault((name, family), []).append(m)
                lines.append(
                    f"| {category} | {name} | {family} | {m['auroc']:.3f} | {m['det@1%']:.3f} | {m['det@5%']:.3f} | "
                    f"{m['balanced']:.3f} | {m['false_alarms']:.3f} | {result['seconds']:.0f} ({result['images']} images) |"
                )
    lines += ["", "Means over categories:", "", "| setting | family | AUROC | det@1% | det@5% | balanced | false alarms |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for (name, family), ms in sorted(means.items()):
        avg = {k: sum(m[k] for m in ms) / len(ms) for k in ("auroc", "det@1%", "det@5%", "balanced", "false_alarms")}
        lines.append(f"| {name} | {family} | {avg['auroc']:.3f} | {avg['det@1%']:.3f} | {avg['det@5%']:.3f} | "
                     f"{avg['balanced']:.3f} | {avg['false_alarms']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="output path without extension")
    parser.add_argument("--categories", default=None, help="comma-separated (default: all)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated of {sorted(SETTINGS)}")
    args = parser.parse_args()

    from myriad.datasets import read_mvtec

    manifest_path = args.data / "devset.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"files": []}
    family_of = {"/".join(Path(f["image"]).parts[-4:]): f.get("family", "all") for f in manifest.get("files", [])}
    names = [c.name for c in read_mvtec(args.data, args.categories.split(",") if args.categories else None)]
    rows: dict[str, dict[str, dict]] = {}
    for category in names:
        for setting in args.settings.split(","):
            rows.setdefault(category, {})[setting] = result = run_category(args.data, category, SETTINGS[setting], family_of)
            print(category, setting, json.dumps(result), flush=True)
    import torch

    meta = {
        "data": args.data.name,
        "about": (
            f"musc, zero-shot, data {args.data.name} ({manifest.get('spec', {}).get('preset', 'default')} preset): each "
            "category's whole test split is one batch with 16 control normals (as `myriad eval` runs it). "
            f"paper = {json.dumps(SETTINGS['paper'])} (the previous defaults); default = this release's defaults. "
            f"Machine {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; wall seconds "
            "include the fit (control draw and fixed calibration) and every batch."
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"meta": meta, "per_category": rows}, indent=1))
    Path(f"{args.out}.md").write_text(render(rows, meta))
    print(render(rows, meta))


if __name__ == "__main__":
    main()
