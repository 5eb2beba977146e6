"""Is Myriad's verdict ever below its expert's? The verdict rules against the expert, same run (by hand).

For each row (a dev set and a setting: one-class on every training normal, or k-shot over
draws) the default expert is fitted per category, the LMM's verdict is calibrated on the
held-out normals (:mod:`myriad.verdict`) and every test image gets the expert's decision, the
LMM's answer and its verdict margin. The rules are then compared on the same images:

- ``expert``: the expert's thresholded decision;
- ``lmm``: the LMM's raw answer (the paper's; an ``unknown`` answer leaves the expert's decision);
- ``either``: the default: the expert's alarm, or the LMM's margin above its calibrated threshold;
- ``either, Yes only``: ``either`` with the threshold raised to 0 where it is lower (explored, not shipped).

Per row: TPR, false-alarm rate, balanced and plain accuracy, the measured false alarms against
the stated ones, the oracle gap (the accuracy of the best single threshold per category on the LMM's
margin, chosen on the test images, minus the calibrated verdict's), the expert's true alarms each rule
vetoes and the catches it adds, and an exact
McNemar test of each rule against the expert on the same images (one-sided p that the rule is
below the expert). Rows where ``either`` fell back to the expert's decision are marked. Per kind and
(where the dev set's ``devset.json`` records them) size and visibility bucket: each rule's detection
rate and the vetoes and added catches of ``either``. Each row
is cached under ``OUT/rows/`` (resumable); writes ``OUT.json`` and ``OUT.md``::

    .venv/bin/python benchmarks/lmm/bench_verdict.py --row default:one_class=data/devset \\
        --row visible:one_class=data/visible --out benchmarks/results/verdict
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

RULES = ("expert", "lmm", "either", "either, Yes only")


def _row_spec(text: str) -> tuple[str, str, Path]:
    """``name:setting=DATA`` with setting ``one_class`` or ``Nshot``."""
    head, _, data = text.partition("=")
    name, _, setting = head.partition(":")
    if not data or setting != "one_class" and not (setting.endswith("shot") and setting[:-4].isdigit()):
        raise SystemExit(f"--row {text!r}: expected NAME:one_class=DATA or NAME:4shot=DATA")
    return name, setting, Path(data)


def run_row(name: str, setting: str, data: Path, expert: str, draws: int, model: Any, cache: Path,
            config: dict | None = None) -> dict:
    """Evaluate one row (cached as JSON): every test image's decisions and each fit's held-out margins."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from myriad.evaluation.lmm_step import LMMStep
    from myriad.evaluation.runner import EvalSettings, evaluate
    from myriad.lmm_verdict import heldout_flags

    calibrations: list[dict] = []

    class Recording(LMMStep):
        def fitted(self, category: Any, detector: Any, normal_images: Any) -> None:
            super().fitted(category, detector, normal_images)
            held = detector.heldout_detections()
            margins = self.heldout_margins
            calibrations.append({
                "category": category.name,
                "calibration": self.calibration.to_dict() if self.calibration else None,
                "expert_rate": self.expert_rate,
                "heldout_margins": margins,
                "heldout_flags": heldout_flags(held) if held is not None else None,
                "heldout_scores": [round(float(d.score), 6) for d in held] if held is not None else None,
                "seconds": round(self.calibration_seconds, 3),
            })

    step = Recording(model)
    k_shot = None if setting == "one_class" else int(setting[:-4])
    settings = EvalSettings(expert=expert, data=data, k_shot=k_shot, runs=1 if k_shot is None else draws,
                            examples=0, progress=False, config=dict(config or {}))
    started = time.perf_counter()
    result = evaluate(settings, steps=[step])
    fits = [{"category": c.name, "run": r.run, "fit_seconds": r.fit_seconds, "ms_per_image": r.ms_per_image,
             "num_fit": r.num_fit} for c in result.categories for r in c.runs]
    row = {
        "name": name, "setting": setting, "data": str(data), "expert": expert,
        "seconds": round(time.perf_counter() - started, 1), "fits": fits, "calibrations": calibrations,
        "records": [{"category": r.category, "run": r.run, "path": r.path, "label": r.label, "defect": r.defect,
                     "expert": bool(r.anomalous), **{k: r.extra[k] for k in ("lmm_decision", "lmm_margin", "verdict", "verdict_source")}}
                    for r in result.records],
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(row))
    tmp.replace(cache)
    return row


def _mcnemar_below(expert_right: list[bool], rule_right: list[bool]) -> float:
    """One-sided exact McNemar p-value that the rule is less accurate than the expert."""
    from scipy.stats import binomtest

    worse = sum(e and not r for e, r in zip(expert_right, rule_right))
    better = sum(r and not e for e, r in zip(expert_right, rule_right))
    if worse + better == 0:
        return 1.0
    return float(binomtest(worse, worse + better, 0.5, alternative="greater").pvalue)


def decisions(row: dict) -> dict[str, list[bool]]:
    """Each rule's decision per record, in record order."""
    thresholds = {}
    for cal in row["calibrations"]:  # one per fit, in run order per category
        thresholds.setdefault(cal["category"], []).append(cal["calibration"])
    out: dict[str, list[bool]] = {rule: [] for rule in RULES}
    for rec in row["records"]:
        cal = thresholds[rec["category"]][rec["run"]]
        out["expert"].append(rec["expert"])
        out["lmm"].append(rec["expert"] if rec["lmm_decision"] == "unknown" else rec["lmm_decision"] == "anomalous")
        out["either"].append(rec["verdict"] == "anomalous")
        t = cal.get("threshold") if cal else None
        yes_only = rec["expert"] or (t is not None and rec["lmm_margin"] > max(t, 0.0))
        out["either, Yes only"].append(yes_only)
    return out


def summarise(row: dict) -> dict:
    """Per rule: rates, accuracies, vetoes, added catches, McNemar p against the expert."""
    labels = [bool(r["label"]) for r in row["records"]]
    dec = decisions(row)
    expert_right = [d == y for d, y in zip(dec["expert"], labels)]
    positives, negatives = sum(labels), len(labels) - sum(labels)
    stated = [c["calibration"] for c in row["calibrations"]]
    fallback = any(c and c.get("fallback") for c in stated)
    expert_rates = [c["expert_rate"] for c in row["calibrations"] if c["expert_rate"] is not None]
    added = [c.get("added_rate") for c in stated if c and c.get("added_rate") is not None]
    from myriad.metrics import best_threshold_accuracy

    # the oracle: one threshold per category on the LMM's margin, chosen on the test images themselves
    oracle = 0
    for name in dict.fromkeys(r["category"] for r in row["records"]):
        part = [r for r in row["records"] if r["category"] == name]
        ys = [r["label"] for r in part]
        if 0 < sum(ys) < len(ys):
            oracle += round(best_threshold_accuracy(ys, [r["lmm_margin"] for r in part]) * len(part))
        else:
            oracle += max(sum(ys), len(ys) - sum(ys))
    out: dict[str, Any] = {"images": len(labels), "defective": positives, "normal": negatives, "fallback": fallback,
                           "oracle_accuracy_margin": oracle / len(labels),
                           "stated_expert_rate": sum(expert_rates) / len(expert_rates) if expert_rates else None,
                           "stated_added_rate": sum(added) / len(added) if added else None, "rules": {}}
    for rule, values in dec.items():
        tp = sum(v and y for v, y in zip(values, labels))
        fp = sum(v and not y for v, y in zip(values, labels))
        tpr = tp / positives if positives else None
        fpr = fp / negatives if negatives else None
        right = [v == y for v, y in zip(values, labels)]
        vetoed = sum(e and not v and y for e, v, y in zip(dec["expert"], values, labels))
        added_catch = sum(v and not e and y for e, v, y in zip(dec["expert"], values, labels))
        expert_tp = sum(e and y for e, y in zip(dec["expert"], labels))
        out["rules"][rule] = {
            "tpr": tpr, "false_alarm_rate": fpr,
            "balanced": None if tpr is None or fpr is None else 0.5 * (tpr + 1 - fpr),
            "accuracy": sum(right) / len(right),
            "vetoed_true_alarms": vetoed, "vetoed_share": vetoed / expert_tp if expert_tp else None,
            "added_catches": added_catch,
            "p_below_expert": _mcnemar_below(expert_right, right),
        }
    return out


#: Groups of defective images the per-bucket table reports: the kind (its folder) and the dev set's buckets.
BUCKET_GROUPS = ("defect", "size_bucket", "visibility_bucket")


def _manifest(data: str) -> dict[str, dict]:
    """The dev set's per-image record (``devset.json``), keyed by the image path's last four parts."""
    path = Path(data) / "devset.json"
    if not path.is_file():
        return {}
    files = json.loads(path.read_text()).get("files", [])
    return {"/".join(Path(f["image"]).parts[-4:]): f for f in files}


def buckets(row: dict) -> dict[str, dict[str, dict]]:
    """Per group and bucket of the row's defective images: how many, each rule's detection rate, and the
    expert's true alarms the default verdict vetoes and the catches it adds (a weakness cannot hide in a mean)."""
    manifest = _manifest(row["data"])
    dec = decisions(row)
    out: dict[str, dict[str, dict]] = {}
    for group in BUCKET_GROUPS:
        table: dict[str, dict] = {}
        for i, rec in enumerate(row["records"]):
            if not rec["label"]:
                continue
            info = rec if group == "defect" else manifest.get("/".join(Path(rec["path"]).parts[-4:]), {})
            key = str(info.get(group, "")) or None
            if key is None:
                continue
            cell = table.setdefault(key, {"images": 0, **{rule: 0 for rule in RULES}, "vetoed": 0, "added": 0})
            cell["images"] += 1
            for rule in RULES:
                cell[rule] += int(dec[rule][i])
            cell["vetoed"] += int(dec["expert"][i] and not dec["either"][i])
            cell["added"] += int(dec["either"][i] and not dec["expert"][i])
        if table:
            out[group] = dict(sorted(table.items()))
    return out


def bucket_lines(rows: list[dict]) -> list[str]:
    """The per-bucket tables of the report (detection rate per rule on each bucket's defective images)."""
    lines = ["", "Per kind and bucket (defective images only; detection rate per rule; vetoes and added catches of `either`):", "",
             "| row | group | bucket | images | expert | lmm | either | vetoed | added |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        label = f"{row['name']}, {row['setting'].replace('_', '-')}"
        for group, table in buckets(row).items():
            for bucket, c in table.items():
                n = c["images"]
                lines.append(f"| {label} | {group.replace('_bucket', '')} | {bucket} | {n} | {c['expert'] / n:.3f} | "
                             f"{c['lmm'] / n:.3f} | {c['either'] / n:.3f} | {c['vetoed']} | {c['added']} |")
    return lines


def markdown(rows: list[dict], summaries: list[dict], about: str) -> str:
    """The report: one table per row group and a mean over rows."""
    lines = ["# Myriad's verdict against its expert", "", about, "",
             "| row | rule | TPR | false alarms | balanced | accuracy | vetoed true alarms | added catches | p (below expert) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    f = lambda v: "-" if v is None else f"{v:.3f}"
    for row, summary in zip(rows, summaries):
        label = f"{row['name']}, {row['setting'].replace('_', '-')}" + (" (falls back to the expert)" if summary["fallback"] else "")
        for rule in RULES:
            r = summary["rules"][rule]
            lines.append(f"| {label} | {rule} | {f(r['tpr'])} | {f(r['false_alarm_rate'])} | {f(r['balanced'])} | "
                         f"{f(r['accuracy'])} | {r['vetoed_true_alarms']} | {r['added_catches']} | {r['p_below_expert']:.3f} |")
    lines += ["", "Mean over rows (balanced accuracy; accuracy):", "", "| rule | balanced | accuracy | rows significantly below the expert (p < 0.05) |", "|---|---:|---:|---:|"]
    for rule in RULES:
        bal = [s["rules"][rule]["balanced"] for s in summaries if s["rules"][rule]["balanced"] is not None]
        acc = [s["rules"][rule]["accuracy"] for s in summaries]
        below = sum(s["rules"][rule]["p_below_expert"] < 0.05 for s in summaries)
        lines.append(f"| {rule} | {f(sum(bal) / len(bal) if bal else None)} | {f(sum(acc) / len(acc))} | {below} |")
    lines += bucket_lines(rows)
    lines += ["", "Stated against measured false alarms of the default verdict (`either`):", "",
              "| row | expert stated | expert measured | verdict stated | verdict measured | oracle gap (margin) | calibration s per fit | held-out normals per fit |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row, summary in zip(rows, summaries):
        e, a = summary["stated_expert_rate"], summary["stated_added_rate"]
        verdict_stated = None if e is None else (e if a is None else 1 - (1 - e) * (1 - a))
        secs = [c["seconds"] for c in row["calibrations"]]
        held = [len(c["heldout_margins"]) for c in row["calibrations"]]
        lines.append(f"| {row['name']}, {row['setting'].replace('_', '-')} | {f(e)} | {f(summary['rules']['expert']['false_alarm_rate'])} | "
                     f"{f(verdict_stated)} | {f(summary['rules']['either']['false_alarm_rate'])} | "
                     f"{f(summary['oracle_accuracy_margin'] - summary['rules']['either']['accuracy'])} | "
                     f"{sum(secs) / len(secs):.1f} | {sum(held) / len(held):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", action="append", required=True, help="NAME:one_class=DATA or NAME:4shot=DATA (repeatable)")
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument("--expert", default="patchcore+global")
    parser.add_argument("--draws", type=int, default=2, help="few-shot reference draws per category")
    parser.add_argument("--lmm", default="mini")
    parser.add_argument("--config", default="{}", help="the expert's config as JSON (e.g. the embedded backbone for "
                        "an expert whose paper weights are not here)")
    args = parser.parse_args()
    out = Path(args.out)
    from myriad.inspection import load_lmm

    model = load_lmm(args.lmm, "cpu", "auto")
    rows, summaries = [], []
    for spec in args.row:
        name, setting, data = _row_spec(spec)
        cache = out.parent / f"{out.name}_rows" / f"{name}_{setting}_{args.expert.replace('+', '-')}.json"
        row = run_row(name, setting, data, args.expert, args.draws, model, cache, json.loads(args.config))
        rows.append(row)
        summaries.append(summarise(row))
        print(f"{name} {setting}: {row['seconds']:.0f} s", flush=True)
    config = f" (config {args.config})" if json.loads(args.config) else ""
    about = (f"Expert {args.expert}{config}, Myriad-mini ({args.lmm}), machine {platform.machine()}; few-shot rows pool "
             f"{args.draws} reference draws. Rule `either` is the default verdict (docs/lmm.md, 'The verdict').")
    for row, summary in zip(rows, summaries):
        summary["buckets"] = buckets(row)
    Path(f"{out}.json").write_text(json.dumps({"about": about, "summaries": summaries,
                                               "rows": [{k: v for k, v in r.items() if k != "records"} for r in rows]}, indent=1))
    Path(f"{out}.md").write_text(markdown(rows, summaries, about))
    print(markdown(rows, summaries, about))


if __name__ == "__main__":
    main()
