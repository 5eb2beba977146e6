"""Before and after, in one run: the default expert's speed, its AUROC per family, and Myriad's verdicts.

Each way (``--way NAME=JSON``) is an expert config and how Myriad answers (default ``before``: PatchCore's exact
FAISS search at fit and test and every backbone on torch, the LMM's whole answer, as ``myriad inspect`` ran;
``after``: what ships). Per dev set and category the ways run back to back on the same
machine (category by category, so a slower stretch of the machine hits both), each as ``myriad eval --lmm``
runs it (:func:`myriad.evaluation.runner.evaluate` with the LMM step): the expert fitted with its calibration,
the verdict calibrated on the held-out normals, every test image scored at batch 8 and answered by Myriad-mini.
Reported per dev set and way: fit seconds (expert with calibration; the verdict's calibration beside it), ms per
image at batch 8 (as ``myriad eval`` measures it) and single-image latency (median of 8), the LMM's ms per image,
``myriad inspect``'s per-image cost (expert + LMM); per family the image AUROC (mean over categories); against the
first way: the largest calibrated-score difference, expert decisions and Myriad verdicts changed. Writes
``OUT.json`` and ``OUT.md``; rows are cached per dev set, category and way under ``OUT_rows/`` (resumable)::

    .venv/bin/python benchmarks/speed/bench_speed.py --row default=data/devset --row realistic=data/realistic \\
        --row visible=data/visible --out benchmarks/results/speed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

#: Each way: the expert's config and how the LMM answers (``full``: the whole answer, as ``myriad inspect`` did;
#: ``decided``: until its first word is decided, as ``myriad inspect`` does now with grounded answers).
BEFORE = {"expert": {"patchcore": {"search": "exact", "heldout_search": "exact", "runtime": "torch"},
                     "global": {"runtime": "torch"}}, "lmm": "full"}
AFTER: dict[str, Any] = {"expert": {}, "lmm": "decided"}


def cpu_facts() -> dict[str, Any]:
    """The CPU's model name and the instruction-set flags that matter for inference."""
    facts: dict[str, Any] = {"machine": platform.machine(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return facts
    for line in text.splitlines():
        if line.startswith("model name") and "model" not in facts:
            facts["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            facts["flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "vnni")) or f in {"f16c"})
            break
    return facts


def run_way(data: Path, category: str, expert: str, way: dict, model: Any, cache: Path, latency_images: int) -> dict:
    """One dev-set category under one way: per-image records, fit/LMM times, single-image latency (cached)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from myriad.evaluation.lmm_step import LMMStep
    from myriad.evaluation.runner import EvalSettings, evaluate
    from myriad.images import load_image
    from myriad.lmm.prompting import answer_decided
    from myriad.lmm_verdict import ask_lmm

    kept: dict[str, Any] = {}
    config = way.get("expert", {})
    decided = way.get("lmm", "full") == "decided"

    class Keeping(LMMStep):
        def fitted(self, category: Any, detector: Any, normal_images: Any) -> None:
            super().fitted(category, detector, normal_images)
            kept["detector"] = detector

        def _ask(self, images: Any, detections: Any) -> tuple[list[str], list[float]]:
            if not decided:
                return super()._ask(images, detections)
            return ask_lmm(self.model, images, detections, None, self.device, max_new_tokens=8, stop_fn=answer_decided)

    step = Keeping(model) if model is not None else None
    settings = EvalSettings(expert=expert, data=data, categories=(category,), examples=0, progress=False, config=config)
    result = evaluate(settings, steps=[step] if step else [])
    run = result.categories[0].runs[0]
    latency = []
    detector = kept.get("detector")
    if detector is not None:
        paths = [r.path for r in result.records][:: max(1, len(result.records) // latency_images)][:latency_images]
        for path in paths:
            image = load_image(path)
            started = time.perf_counter()
            detector.detect([image])
            latency.append(1000 * (time.perf_counter() - started))
    row = {
        "category": category, "fit_seconds": run.fit_seconds, "ms_per_image": run.ms_per_image,
        "verdict_fit_seconds": step.calibration_seconds if step else None,
        "lmm_ms_per_image": 1000 * step.seconds / max(len(result.records), 1) if step else None,
        "latency_ms": statistics.median(latency) if latency else None,
        "records": [{"path": r.path, "label": r.label, "defect": r.defect, "raw_score": r.raw_score, "score": r.score,
                     "anomalous": r.anomalous, "verdict": r.extra.get("verdict")} for r in result.records],
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(row))
    tmp.replace(cache)
    return row


def warm_up(data: Path, category: str, expert: str, way: dict) -> None:
    """Load what a way's first fit would load (backbones, a runtime's export, FAISS), untimed."""
    from myriad.fusion import make_detector
    from myriad.images import load_image

    config = way.get("expert", {})
    normals = [load_image(p) for p in sorted((data / category / "train" / "good").glob("*.png"))[:12]]
    # no feature caches: the timed fit must compute every image's features itself
    members = expert.split("+")
    uncached = {m: {**config.get(m, {}), "feature_cache_mb": 0} for m in members} if len(members) > 1 else {
        **config, "feature_cache_mb": 0}
    detector = make_detector(expert, uncached)
    detector.fit(normals)
    detector.detect(normals[:2])


def families(data: Path) -> dict[str, str]:
    """Defect kind -> family, from the dev set's ``devset.json``."""
    path = data / "devset.json"
    kinds = json.loads(path.read_text()).get("defect_kinds", {}) if path.is_file() else {}
    return {kind: info.get("family", kind) for kind, info in kinds.items()}


def summarise(name: str, data: Path, ways: list[str], rows: dict[str, list[dict]]) -> dict:
    """Per way: times and AUROC per family; against the first way: score and decision differences."""
    from myriad.metrics import image_auroc

    family_of = families(data)
    out: dict[str, Any] = {"name": name, "ways": {}}
    first = ways[0]
    for way in ways:
        cats = rows[way]
        images = sum(len(c["records"]) for c in cats)
        per_family: dict[str, list[float]] = {}
        for c in cats:
            normals = [r for r in c["records"] if not r["label"]]
            for fam in sorted({family_of.get(r["defect"], r["defect"]) for r in c["records"] if r["label"]}):
                part = normals + [r for r in c["records"] if r["label"] and family_of.get(r["defect"], r["defect"]) == fam]
                if normals and len(part) > len(normals):
                    per_family.setdefault(fam, []).append(image_auroc([r["label"] for r in part], [r["raw_score"] for r in part]))
        mean = lambda xs: sum(xs) / len(xs) if xs else None
        summary: dict[str, Any] = {
            "images": images,
            "fit_seconds": mean([c["fit_seconds"] for c in cats]),
            "verdict_fit_seconds": mean([c["verdict_fit_seconds"] for c in cats if c["verdict_fit_seconds"] is not None]),
            "ms_per_image": sum(c["ms_per_image"] * len(c["records"]) for c in cats) / images,
            "latency_ms": mean([c["latency_ms"] for c in cats if c["latency_ms"] is not None]),
            "lmm_ms_per_image": mean([c["lmm_ms_per_image"] for c in cats if c["lmm_ms_per_image"] is not None]),
            "auroc": {fam: mean(v) for fam, v in per_family.items()},
        }
        if summary["lmm_ms_per_image"] is not None:
            summary["inspect_ms_per_image"] = summary["ms_per_image"] + summary["lmm_ms_per_image"]
        if way != first:
            base = {r["path"]: r for c in rows[first] for r in c["records"]}
            recs = [r for c in cats for r in c["records"]]
            summary["score_diff_max"] = max(abs(r["score"] - base[r["path"]]["score"]) for r in recs)
            summary["decisions_changed"] = sum(r["anomalous"] != base[r["path"]]["anomalous"] for r in recs)
            summary["verdicts_changed"] = sum(r["verdict"] != base[r["path"]]["verdict"] for r in recs if r["verdict"] is not None)
        out["ways"][way] = summary
    return out


def markdown(summaries: list[dict], ways: list[str], about: str) -> str:
    """The report: one table of times, one of AUROC per family, one of changes."""
    f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"
    lines = ["# Speed: before and after in one run", "", about, "",
             "| dev set | way | fit s (expert + calibration) | verdict calibration s | expert ms / image (batch 8) | "
             "expert latency ms (1 image) | LMM ms / image | inspect ms / image | speed-up (expert, batch 8) | speed-up (fit) | speed-up (inspect) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        b = s["ways"][ways[0]]
        for way in ways:
            w = s["ways"][way]
            ratio = lambda key: None if not w.get(key) or not b.get(key) else b[key] / w[key]
            fit_total = lambda x: (x["fit_seconds"] or 0) + (x["verdict_fit_seconds"] or 0)
            lines.append(f"| {s['name']} | {way} | {f(w['fit_seconds'], 1)} | {f(w['verdict_fit_seconds'], 1)} | "
                         f"{f(w['ms_per_image'], 0)} | {f(w['latency_ms'], 0)} | {f(w['lmm_ms_per_image'], 0)} | "
                         f"{f(w.get('inspect_ms_per_image'), 0)} | {f(ratio('ms_per_image'), 2)} | "
                         f"{f(fit_total(b) / fit_total(w), 2)} | {f(ratio('inspect_ms_per_image'), 2)} |")
    lines += ["", "Image AUROC per family (mean over categories):", "",
              "| dev set | family | " + " | ".join(ways) + " | difference |", "|---|---|" + "---:|" * (len(ways) + 1)]
    for s in summaries:
        for fam in s["ways"][ways[0]]["auroc"]:
            vals = [s["ways"][w]["auroc"].get(fam) for w in ways]
            diff = None if None in vals else max(vals) - min(vals)
            lines.append(f"| {s['name']} | {fam} | " + " | ".join(f(v) for v in vals) + f" | {f(diff, 4)} |")
    lines += ["", f"Against `{ways[0]}` on the same images:", "",
              "| dev set | way | images | calibrated score diff (max) | expert decisions changed | Myriad verdicts changed |",
              "|---|---|---:|---:|---:|---:|"]
    for s in summaries:
        for way in ways[1:]:
            w = s["ways"][way]
            n = w["images"]
            lines.append(f"| {s['name']} | {way} | {n} | {w['score_diff_max']:.2e} | {w['decisions_changed']} "
                         f"({w['decisions_changed'] / n:.1%}) | {w['verdicts_changed']} ({w['verdicts_changed'] / n:.1%}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", action="append", required=True, help="NAME=DATA (repeatable)")
    parser.add_argument("--way", action="append", help='NAME=JSON: {"expert": CONFIG, "lmm": "full" | "decided"} '
                        "(repeatable; default before / after)")
    parser.add_argument("--expert", default="patchcore+global")
    parser.add_argument("--lmm", default="mini", help="Myriad weights ('none': the expert only)")
    parser.add_argument("--categories", default=None, help="comma-separated subset of each dev set's categories")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-images", type=int, default=8)
    parser.add_argument("--out", required=True, help="output path without extension")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    ways = dict(w.split("=", 1) for w in args.way) if args.way else {"before": json.dumps(BEFORE), "after": json.dumps(AFTER)}
    configs = {name: json.loads(text) for name, text in ways.items()}
    out = Path(args.out)
    model = None
    if args.lmm != "none":
        from myriad.inspection import load_lmm

        model = load_lmm(args.lmm, "cpu", "auto")
    summaries = []
    for spec in args.row:
        name, _, data_text = spec.partition("=")
        data = Path(data_text)
        categories = sorted(p.name for p in data.iterdir() if (p / "test").is_dir())
        if args.categories:
            categories = [c for c in categories if c in args.categories.split(",")]
        rows: dict[str, list[dict]] = {way: [] for way in configs}
        for way, config in configs.items():
            warm_up(data, categories[0], args.expert, config)
        for category in categories:
            for way, config in configs.items():
                cache = out.parent / f"{out.name}_rows" / f"{name}_{category}_{way}.json"
                row = run_way(data, category, args.expert, config, model, cache, args.latency_images)
                rows[way].append(row)
                print(f"{name} {category} {way}: fit {row['fit_seconds']:.1f} s, {row['ms_per_image']:.0f} ms/image", flush=True)
        summaries.append(summarise(name, data, list(configs), rows))
    about = (f"Expert `{args.expert}`, ways {json.dumps(ways)}; Myriad `{args.lmm}`; {args.threads} threads; CPU "
             f"{json.dumps(cpu_facts())}.")
    Path(f"{out}.json").write_text(json.dumps({"about": about, "summaries": summaries}, indent=1))
    Path(f"{out}.md").write_text(markdown(summaries, list(configs), about))
    print(markdown(summaries, list(configs), about))


if __name__ == "__main__":
    main()
