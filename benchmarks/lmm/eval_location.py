"""Does Myriad-mini say *where* the defect is? Held-out devset, one-class PatchCore maps (not a test).

For every test image of the development benchmark, the model is asked
``myriad.training.answers.LOCATION_QUESTION``; its answer is parsed for the verdict (the documented
Yes/No rule) and for a region of the 3 x 3 grid ("top left", ..., "center", ..., "bottom right").
The reference region is the cell holding most of the ground-truth mask's pixels. Defects covering
more than ``--global-fraction`` of the image (whole-image texture changes) have no meaningful
region and are counted apart. Baselines: the expert map alone (the cell with most pixels above the
calibrated threshold, else the cell of the map's maximum) and the most frequent region.

    .venv/bin/python benchmarks/lmm/eval_location.py [--lmm mini|FILE] [--out benchmarks/results/lmm_location_devset]
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
RESULTS = Path(__file__).resolve().parents[1] / "results"


def parse_region(text: str) -> str | None:
    """The first grid region named in ``text`` (longest names first, so "top left" beats "top")."""
    from myriad.training.answers import REGIONS

    names = sorted((n for row in REGIONS for n in row), key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b", re.IGNORECASE)
    found = pattern.search(text)
    return found.group(1).lower() if found else None


def map_region(calibrated_map) -> str:
    """The expert-only baseline: the cell with most pixels above 0.5, else the cell of the maximum."""
    import numpy as np

    from myriad.training.answers import defect_region

    above = calibrated_map > 0.5
    if above.any():
        return defect_region(above)  # type: ignore[return-value]
    peak = np.zeros_like(above)
    peak[np.unravel_index(int(np.argmax(calibrated_map)), calibrated_map.shape)] = True
    return defect_region(peak)  # type: ignore[return-value]


def run(lmm: str, data: Path, batch: int, global_fraction: float, precision: str) -> dict:
    import numpy as np

    from myriad.datasets import load_mask, read_mvtec
    from myriad.images import load_image
    from myriad.inspection import Inspector
    from myriad.lmm.prompting import parse_answer
    from myriad.training.answers import LOCATION_QUESTION, defect_region

    inspector = None
    rows = []
    for category in read_mvtec(data):
        normals = [load_image(s.path) for s in category.train]
        if inspector is None:
            inspector = Inspector("patchcore", {"mode": "one_class", "progress": False}, lmm=lmm, precision=precision)
        inspector.fit(normals)
        for start in range(0, len(category.test), batch):
            samples = category.test[start : start + batch]
            images = [load_image(s.path) for s in samples]
            for sample, image, result in zip(samples, images, inspector.inspect(images, ask=LOCATION_QUESTION)):
                mask = load_mask(sample, image.shape[:2]) if sample.label else None
                coverage = float(mask.mean()) if mask is not None else 0.0
                rows.append(
                    {
                        "category": category.name,
                        "path": str(sample.path),
                        "label": sample.label,
                        "defect": sample.defect,
                        "answer": result.answer,
                        "verdict": parse_answer(result.answer),
                        "region": parse_region(result.answer),
                        "truth": defect_region(mask) if mask is not None else None,
                        "global": coverage > global_fraction,
                        "map_region": map_region(np.asarray(result.anomaly_map)),
                    }
                )
    local = [r for r in rows if r["label"] == 1 and not r["global"] and r["truth"] is not None]
    said_yes = [r for r in local if r["verdict"] == "anomalous"]
    majority = Counter(r["truth"] for r in local).most_common(1)[0][0] if local else None

    def share(items, ok) -> float | None:
        return round(sum(ok(r) for r in items) / len(items), 3) if items else None

    per_cat = {}
    for name in sorted({r["category"] for r in rows}):
        cat = [r for r in rows if r["category"] == name]
        per_cat[name] = share(cat, lambda r: r["verdict"] == ("anomalous" if r["label"] else "normal"))
    return {
        "lmm": lmm,
        "precision": precision,
        "question": LOCATION_QUESTION,
        "images": len(rows),
        "verdict_accuracy": round(sum(per_cat.values()) / len(per_cat), 3),
        "verdict_accuracy_per_category": per_cat,
        "unknown_verdicts": sum(r["verdict"] == "unknown" for r in rows),
        "local_defects": len(local),
        "global_defects": sum(1 for r in rows if r["label"] == 1 and r["global"]),
        "region_named_on_local_defects": share(local, lambda r: r["region"] is not None),
        "region_accuracy_on_local_defects": share(local, lambda r: r["region"] == r["truth"]),
        "region_accuracy_when_answered_yes": share(said_yes, lambda r: r["region"] == r["truth"]),
        "baseline_expert_map_region_accuracy": share(local, lambda r: r["map_region"] == r["truth"]),
        "baseline_majority_region": majority,
        "baseline_majority_region_accuracy": share(local, lambda r: r["truth"] == majority),
        "answers_sample": [r["answer"] for r in rows[:: max(1, len(rows) // 8)]],
        "rows": rows,
    }


def to_markdown(r: dict) -> str:
    keys = [
        ("verdict accuracy (Yes/No parsed from the location answers, mean over categories)", "verdict_accuracy"),
        ("unknown verdicts", "unknown_verdicts"),
        ("local defects (mask covers at most the global fraction)", "local_defects"),
        ("whole-image defects (left out of the region scores)", "global_defects"),
        ("a region is named (local defects)", "region_named_on_local_defects"),
        ("**region accuracy (local defects)**", "region_accuracy_on_local_defects"),
        ("region accuracy where the answer is Yes", "region_accuracy_when_answered_yes"),
        ("baseline: the expert map's region", "baseline_expert_map_region_accuracy"),
        ("baseline: always the most frequent region", "baseline_majority_region_accuracy"),
    ]
    lines = [
        f"# Where is the defect? Myriad-mini (`{r['lmm']}`, {r['precision']}) on the held-out devset",
        "",
        f"Question: \"{r['question']}\"; one-class PatchCore maps; {r['images']} test images; 3 x 3 grid regions.",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    lines += [f"| {label} | {r[key]} |" for label, key in keys]
    lines += ["", "Answers (every 8th image):", ""] + [f"- `{a}`" for a in r["answers_sample"]] + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lmm", default="mini")
    parser.add_argument("--data", type=Path, default=Path("runs/devset"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--global-fraction", type=float, default=0.25)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS / "lmm_location_devset")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: no devset; run `myriad make-devset {args.data}` first")
    result = run(args.lmm, args.data, args.batch, args.global_fraction, args.precision)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
