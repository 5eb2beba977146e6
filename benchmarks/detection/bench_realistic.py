"""Detection on the realistic benchmark, per bucket (run by hand, not a test).

For each named expert setting, fits on the normal ``train/good`` images of every category
of a realistic dev set (``myriad make-devset DATA --preset realistic``) and reports image
AUROC and accuracy at the calibrated threshold overall and per size bucket, visibility
bucket, defect family and kind (:mod:`myriad.synthetic.realistic_buckets`), one-class and
few-shot, under the paper's threshold (maximum held-out normal) and a target false-alarm
rate. Writes ``OUT.json`` and ``OUT.md``::

    .venv/bin/myriad make-devset benchmarks/data/realistic --preset realistic
    .venv/bin/python benchmarks/detection/bench_realistic.py --data benchmarks/data/realistic \\
        --out benchmarks/results/realistic_detection

``--settings NAME,...`` picks rows (see ``SETTINGS``); ``--shots 1,2,4`` the few-shot rows
(for the settings named by ``--few-shot-settings``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

#: name -> (expert, config, what it is)
SETTINGS: dict[str, tuple[str, dict[str, Any], str]] = {
    "patchcore-old-default": (
        "patchcore", {"layers": [3, 4], "image_size": 256, "coreset_ratio": 0.1},
        "PatchCore as shipped before the realistic benchmark (Lite0 stages 3+4, 256 px, coreset 10 %)",
    ),
    "previous-default": (
        "patchcore+global", {"patchcore": {"image_size": 256}},
        "the fused default before PatchCore's input became 512 px (PatchCore stages 2+3 at 256 px + global)",
    ),
    "patchcore": ("patchcore", {}, "PatchCore at its current default"),
    "global": ("global", {}, "the texture-wide expert alone"),
    "default": ("patchcore+global", {}, "the fused default expert"),
}


def _bucket_rows(result: Any, manifest: dict, run: int, member: str | None = None) -> dict:
    """Bucket metrics of one run: the expert's raw scores, or one fused member's (its raw score and decision)."""
    from myriad.synthetic.realistic_buckets import bucket_metrics

    predictions = []
    for r in result.records:
        if r.run != run:
            continue
        if member is None:
            predictions.append({"image": r.path, "score": r.raw_score, "decision": r.anomalous, "label": r.label})
        else:
            m = r.extra["members"][member]
            predictions.append({"image": r.path, "score": m["raw_score"], "decision": m["anomalous"], "label": r.label})
    return bucket_metrics(predictions, manifest)


def _member_records(result: Any, run: int, member: str) -> dict[str, list[tuple[int, float, bool]]]:
    by_category: dict[str, list[tuple[int, float, bool]]] = {}
    for r in result.records:
        if r.run == run:
            m = r.extra["members"][member]
            by_category.setdefault(r.category, []).append((r.label, m["raw_score"], m["anomalous"]))
    return by_category


def _overall_auroc(result: Any, run: int, member: str) -> float | None:
    """A member's image AUROC, per category then averaged (as the runner reports the expert's)."""
    from myriad.metrics import image_auroc

    values = [
        image_auroc([l for l, _, _ in rows], [s for _, s, _ in rows])
        for rows in _member_records(result, run, member).values()
        if len({l for l, _, _ in rows}) == 2
    ]
    return _mean(values)


def _overall_accuracy(result: Any, run: int, member: str) -> float | None:
    """A member's accuracy at its own calibrated threshold, per category then averaged."""
    values = [
        sum(int(a == bool(l)) for l, _, a in rows) / len(rows) for rows in _member_records(result, run, member).values()
    ]
    return _mean(values)


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(statistics.fmean(kept), 4) if kept else None


def run_setting(
    name: str, data: Path, manifest: dict, k_shot: int | None, runs: int, false_alarm_rate: float | None,
    config_override: dict | None = None,
) -> dict:
    """Evaluate one setting; overall metrics averaged over categories and runs, buckets per run then averaged."""
    from myriad.evaluation.runner import EvalSettings, evaluate

    expert, config, about = SETTINGS[name]
    config = {**config, **(config_override or {})}
    settings = EvalSettings(
        expert=expert, data=data, k_shot=k_shot, config=config, runs=runs, seed=0,
        false_alarm_rate=false_alarm_rate, progress=False, examples=0,
    )
    started = time.perf_counter()
    result = evaluate(settings, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    seconds = time.perf_counter() - started
    per_run = [r for c in result.categories for r in c.runs]
    buckets = [_bucket_rows(result, manifest, run) for run in range(runs)]
    members = list(result.records[0].extra.get("members", {})) if result.records else []
    member_rows = [
        {
            "setting": f"{name} / member {member}",
            "expert": member,
            "about": f"member {member} of {expert}, calibrated on its own, in the same run",
            "config": result.config.get(member, {}),
            "k_shot": k_shot,
            "runs": runs,
            "false_alarm_rate": false_alarm_rate,
            "image_auroc": _mean([_overall_auroc(result, run, member) for run in range(runs)]),
            "expert_accuracy": _mean([_overall_accuracy(result, run, member) for run in range(runs)]),
            "pixel_auroc": None,
            "fit_seconds_per_category": None,
            "ms_per_image": None,
            "seconds": None,
            "buckets": [_bucket_rows(result, manifest, run, member) for run in range(runs)],
            "per_category": {},
        }
        for member in members
    ]
    return {
        "setting": name,
        "expert": expert,
        "about": about,
        "config": result.config,
        "k_shot": k_shot,
        "runs": runs,
        "false_alarm_rate": false_alarm_rate,
        "image_auroc": _mean([r.metrics.get("image_auroc") for r in per_run]),
        "expert_accuracy": _mean([r.metrics.get("expert_accuracy") for r in per_run]),
        "pixel_auroc": _mean([r.metrics.get("pixel_auroc") for r in per_run]),
        "fit_seconds_per_category": _mean([r.fit_seconds for r in per_run]),
        "ms_per_image": _mean([r.ms_per_image for r in per_run]),
        "seconds": round(seconds, 1),
        "buckets": buckets,
        "members": member_rows,
        "per_category": {
            c.name: {
                "image_auroc": _mean([r.metrics.get("image_auroc") for r in c.runs]),
                "expert_accuracy": _mean([r.metrics.get("expert_accuracy") for r in c.runs]),
            }
            for c in result.categories
        },
    }


def _bucket_mean(row: dict, group: str, bucket: str, key: str) -> float | None:
    values = []
    for run in row["buckets"]:
        cell = run["groups"].get(group, {}).get(bucket)
        if cell is not None:
            values.append(cell.get(key))
    return _mean(values)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(rows: list[dict], header: dict) -> str:
    """The Markdown report: an overall table, then one table per bucket group (AUROC / accuracy)."""
    from myriad.synthetic.realistic_buckets import GROUPS

    lines = [
        "# Detection on the realistic benchmark",
        "",
        f"Data: `{header['data']}` ({header['categories']} categories); machine: {header['machine']}; "
        f"torch threads: {header['threads']}. Generated by `benchmarks/detection/bench_realistic.py`.",
        "Accuracy is at the calibrated threshold: the paper's maximum held-out normal unless the row names a "
        "false-alarm rate. Bucket AUROC: that bucket's defective images against all normal test images, per "
        "category, averaged over categories.",
        "",
        "| setting | shots | threshold | image AUROC | accuracy | pixel AUROC | fit s / category | ms / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        shots = "one-class" if row["k_shot"] is None else f"{row['k_shot']} ({row['runs']} draws)"
        rule = "max normal" if row["false_alarm_rate"] is None else f"FAR {row['false_alarm_rate']:g}"
        lines.append(
            f"| {row['setting']} | {shots} | {rule} | {_fmt(row['image_auroc'])} | {_fmt(row['expert_accuracy'])} | "
            f"{_fmt(row['pixel_auroc'])} | {row['fit_seconds_per_category']} | {row['ms_per_image']} |"
        )
    for group in GROUPS:
        buckets: list[str] = []
        for row in rows:
            for run in row["buckets"]:
                for bucket in run["groups"].get(group, {}):
                    if bucket not in buckets:
                        buckets.append(bucket)
        if not buckets:
            continue
        lines += ["", f"## Per {group.replace('_', ' ')}: image AUROC / accuracy", ""]
        lines.append("| setting | shots | threshold | " + " | ".join(buckets) + " |")
        lines.append("|---|---|---|" + "---|" * len(buckets))
        for row in rows:
            shots = "one-class" if row["k_shot"] is None else str(row["k_shot"])
            rule = "max" if row["false_alarm_rate"] is None else f"FAR {row['false_alarm_rate']:g}"
            cells = [
                f"{_fmt(_bucket_mean(row, group, b, 'image_auroc'))} / {_fmt(_bucket_mean(row, group, b, 'accuracy'))}"
                for b in buckets
            ]
            lines.append(f"| {row['setting']} | {shots} | {rule} | " + " | ".join(cells) + " |")
        counts = []
        for b in buckets:
            cell = rows[0]["buckets"][0]["groups"].get(group, {}).get(b) if rows and rows[0]["buckets"] else None
            counts.append(f"{b}: {cell.get('defective') if cell else '-'}")
        lines.append("")
        lines.append("Defective images per bucket: " + ", ".join(counts) + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the settings, write JSON and Markdown."""
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument("--settings", default="patchcore-old-default,global,default")
    parser.add_argument("--few-shot-settings", default="default")
    parser.add_argument("--shots", default="1,2,4")
    parser.add_argument("--runs", type=int, default=2, help="draws per few-shot row")
    parser.add_argument("--false-alarm-rate", type=float, default=0.01, help="also this row for the default (0: skip)")
    parser.add_argument("--one-class", default="1", help="0: skip the one-class rows of --settings")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", default=None, help="JSON override merged into every setting's config")
    parser.add_argument("--merge", nargs="+", type=Path, default=None,
                        help="instead of running: merge these JSON reports (e.g. two halves run in parallel) into --out")
    args = parser.parse_args(argv)
    if args.merge:
        from myriad.io import atomic_write_text

        parts = [json.loads(p.read_text()) for p in args.merge]
        rows = [row for part in parts for row in part["rows"]]
        header = parts[0]["header"]
        atomic_write_text(args.out.with_suffix(".json"), json.dumps({"header": header, "rows": rows}, indent=2))
        atomic_write_text(args.out.with_suffix(".md"), markdown(rows, header))
        return
    torch.set_num_threads(args.threads)
    manifest = json.loads((args.data / "devset.json").read_text())
    override = json.loads(args.config) if args.config else None
    plan: list[tuple[str, int | None, int, float | None]] = []
    for name in filter(None, args.settings.split(",")) if args.one_class != "0" else []:
        plan.append((name, None, 1, None))
    if args.false_alarm_rate:
        for name in filter(None, args.few_shot_settings.split(",")):
            plan.append((name, None, 1, args.false_alarm_rate))
    for name in filter(None, args.few_shot_settings.split(",")):
        for shots in filter(None, args.shots.split(",")):
            plan.append((name, int(shots), args.runs, None))
    rows = []
    for name, k_shot, runs, rate in plan:
        print(f"{name} k_shot={k_shot} far={rate} ...", file=sys.stderr, flush=True)
        row = run_setting(name, args.data, manifest, k_shot, runs, rate, override)
        rows += [row, *row.pop("members")]
        print(f"  AUROC {row['image_auroc']} accuracy {row['expert_accuracy']} ({row['seconds']} s)",
              file=sys.stderr, flush=True)
    header = {
        "data": str(args.data),
        "categories": len({f.get("category") for f in manifest.get("files", [])}),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "threads": args.threads,
    }
    from myriad.io import atomic_write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps({"header": header, "rows": rows}, indent=2))
    atomic_write_text(args.out.with_suffix(".md"), markdown(rows, header))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
