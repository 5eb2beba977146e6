"""Do the decisions keep what the experts rank? Old and new calibration and fusion, same run (by hand).

For every category of a dev set (``visible``, ``realistic`` or the default synthetic one) the
default experts are fitted once on ``--normals`` training images and every test image is scored.
The old and new decisions are made by two detectors fitted on the same images (``--old``):

- ``previous`` (default): the previous release's default (leave-one-out calibration where the
  expert can, tail-evidence fusion, PatchCore without its position baseline), scored on its own;
- ``kfold-max``: the *same fitted experts* calibrated by k folds and fused by the maximum of
  calibrated scores (the release before);

**new** is the current default (``calibration="auto"``, ``rule="tail"``, every member's defaults).

Each member alone (new calibration) is reported too. Per benchmark, family (local /
texture-wide) and category: image AUROC, the operating curve (detection rate at 1 %, 2 % and
5 % false alarms measured on the test normals), the calibrated decision (accuracy, balanced
accuracy, detection rate, measured false-alarm rate against the stated one) and the oracle gap
(best single-threshold accuracy minus calibrated accuracy); per size and visibility bucket, the
AUROC and detection rate. Fit times of both calibrations are measured in the same run. Writes
``OUT.json`` (with every image's scores) and ``OUT.md``::

    .venv/bin/python benchmarks/detection/bench_decisions.py --data data/visible --out benchmarks/results/decisions_visible
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

EXPERT = "patchcore+global"
#: The old side's experts (``--old-expert``; default: the same as the new side's).
OLD_EXPERT: str | None = None
#: What the previous release's default set differently, per member (``--old previous``).
PREVIOUS = {"patchcore": {"score_sigma": 0.0}}
#: Settings the new side changes from every member's defaults (``--set member.key=value``).
NEW_SETTINGS: dict[str, dict[str, Any]] = {}
OLD_ABOUT = {
    "previous": "old = the previous release's default (PatchCore's image score the raw maximum, score_sigma=0), fitted and scored on its own; ",
    "default": "old = the current default, fitted and scored on its own; ",
    "kfold-max": "old = the same fitted experts, k-fold calibration + max fusion; ",
}
RATES = (0.01, 0.02, 0.05)


def _family(record: dict | None, sample: Any) -> str:
    if sample.label == 0:
        return "good"
    if record is not None and record.get("family"):
        return str(record["family"])
    return "all"


def score_category(
    category: Any, manifest_index: dict, normals: int, log: Any, shots: int = 0, seed: int = 0, old_mode: str = "previous"
) -> dict:
    """Fit both calibrations, score the test split once, decide every image both ways.

    ``shots`` > 0: few-shot on that many references drawn from the training images (seeded), with the
    experts' few-shot settings (as ``myriad inspect`` picks them); else one-class on ``normals``.
    """
    import numpy as np

    from myriad.expert_settings import resolve_config
    from myriad.fusion import make_detector
    from myriad.images import load_image

    if shots:
        order = np.random.default_rng(seed).permutation(len(category.train))[:shots]
        train = [load_image(category.train[int(i)].path) for i in order]
    else:
        train = [load_image(s.path) for s in category.train[:normals]]
    config = resolve_config(EXPERT, {}, num_normal=len(train))
    new_config = {name: dict(cfg, **NEW_SETTINGS.get(name, {})) for name, cfg in config.items()}
    tests = category.test
    started = time.perf_counter()
    new = make_detector(EXPERT, new_config, rule="tail").fit(train, calibration="auto", seed=seed)
    fit_new = time.perf_counter() - started
    started = time.perf_counter()
    if old_mode in ("previous", "default"):
        changes = PREVIOUS if old_mode == "previous" else {}
        old_spec = OLD_EXPERT or EXPERT
        old_base = resolve_config(old_spec, {}, num_normal=len(train))
        old_config = {name: dict(cfg, **changes.get(name, {})) for name, cfg in old_base.items()}
        old = make_detector(old_spec, old_config, rule="tail").fit(train, calibration="auto", seed=seed)
    else:
        old = make_detector(EXPERT, config, rule="max").fit(train, calibration="kfold", seed=seed)
    fit_old = time.perf_counter() - started
    log(f"{category.name}: fitted (new {fit_new:.0f} s, old {fit_old:.0f} s); scoring {len(tests)} images")
    rows = []
    started = time.perf_counter()
    for start in range(0, len(tests), 16):
        chunk = tests[start : start + 16]
        images = [load_image(s.path) for s in chunk]
        detections = new.detect(images)
        old_detections = old.detect(images) if old_mode != "kfold-max" else [None] * len(chunk)
        for sample, det, old_det in zip(chunk, detections, old_detections):
            rel = "/".join(Path(sample.path).parts[-4:])
            record = manifest_index.get(rel)
            raw = {name: m["raw_score"] for name, m in det.members.items()}
            if old_det is not None:
                old_raw = {name: m["raw_score"] for name, m in old_det.members.items()}
                old_score, old_decision = float(old_det.raw_score), bool(old_det.anomalous)
                old_member_decision = {name: m.get("anomalous_alone", m["anomalous"]) for name, m in old_det.members.items()}
            else:
                old_raw = raw
                old_score = float(max(o.calibrator.scale(raw[o.expert_name]) for o in old.members))
                old_decision = bool(any(raw[o.expert_name] > o.calibrator.threshold for o in old.members))
                old_member_decision = None
            rows.append({
                "image": rel,
                "label": int(sample.label),
                "family": _family(record, sample),
                "kind": sample.defect,
                "size_bucket": None if record is None else record.get("size_bucket"),
                "visibility_bucket": None if record is None else record.get("visibility_bucket"),
                "members_raw": raw,
                "members_new": {name: m["score"] for name, m in det.members.items()},
                "members_new_decision": {name: m.get("anomalous_alone", m["anomalous"]) for name, m in det.members.items()},
                "members_old_raw": old_raw,
                "members_old_decision": old_member_decision,
                "new_score": float(det.raw_score),
                "new_decision": bool(det.anomalous),
                "old_score": old_score,
                "old_decision": old_decision,
            })
    score_time = time.perf_counter() - started
    return {
        "rows": rows,
        "stated": {
            "new": new.false_alarm_rate,
            "old": old.false_alarm_rate,
            **{f"member:{m.expert_name}": m.false_alarm_rate for m in new.members},
            **{f"old-member:{m.expert_name}": m.false_alarm_rate for m in old.members},
        },
        "calibration": {"new": new.calibration_record(), "old": old.calibration_record()},
        "heldout": {
            "new": {m.expert_name: list(m.calibrator.heldout or ()) for m in new.members},
            "old": {m.expert_name: list(m.calibrator.heldout or ()) for m in old.members},
        },
        "seconds": {"fit_new": fit_new, "fit_old": fit_old, "score_per_image": score_time / max(len(tests), 1),
                    "scored_both": old_mode != "kfold-max"},
    }


def _metrics(labels: list[int], scores: list[float], decisions: list[bool] | None) -> dict:
    import numpy as np

    from myriad.metrics import best_threshold_accuracy, image_auroc

    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    normals, defects = s[y == 0], s[y == 1]
    out: dict[str, Any] = {"defective": int(len(defects)), "normal": int(len(normals))}
    out["image_auroc"] = image_auroc(y, s) if len(normals) and len(defects) else None
    for rate in RATES:
        if len(normals) and len(defects):
            cut = float(np.quantile(normals, 1 - rate, method="higher"))
            out[f"detect@{rate:g}"] = float(np.mean(defects > cut))
    if len(normals) and len(defects):
        out["best_accuracy"] = best_threshold_accuracy(y, s)
    if decisions is not None:
        d = np.asarray(decisions, dtype=bool)
        out["accuracy"] = float(np.mean(d == (y == 1)))
        tpr = float(np.mean(d[y == 1])) if len(defects) else None
        fpr = float(np.mean(d[y == 0])) if len(normals) else None
        out["detection_rate"], out["false_alarms"] = tpr, fpr
        out["balanced_accuracy"] = None if tpr is None or fpr is None else (tpr + 1 - fpr) / 2
        if "best_accuracy" in out:
            out["oracle_gap"] = out["best_accuracy"] - out["accuracy"]
    return out


def _methods(rows: list[dict]) -> dict[str, tuple[list[float], list[bool] | None]]:
    members = sorted(rows[0]["members_raw"]) if rows else []
    previous = bool(rows) and rows[0].get("members_old_decision") is not None
    out = {
        ("old (previous default)" if previous else "old (kfold, max)"): (
            [r["old_score"] for r in rows], [r["old_decision"] for r in rows]),
        "new (default)": ([r["new_score"] for r in rows], [r["new_decision"] for r in rows]),
    }
    for name in members:
        if previous and any(name in r["members_old_raw"] and r["members_old_raw"][name] != r["members_raw"][name] for r in rows):
            out[f"{name} alone, old"] = ([r["members_old_raw"][name] for r in rows],
                                         [r["members_old_decision"][name] for r in rows])
        out[f"{name} alone"] = ([r["members_raw"][name] for r in rows], [r["members_new_decision"][name] for r in rows])
    return out


def summarise(per_category: dict[str, dict]) -> dict:
    """Rows per (family, method): AUROC averaged over categories, decisions pooled; per category; per bucket."""
    import numpy as np

    families = sorted({r["family"] for c in per_category.values() for r in c["rows"] if r["family"] != "good"})
    table: dict[str, Any] = {"families": {}, "categories": {}, "buckets": {}}
    for family in families + ["all"]:
        by_method: dict[str, Any] = {}
        for name, cat in per_category.items():
            rows = [r for r in cat["rows"] if r["family"] in ("good", family) or family == "all"]
            for method, (scores, decisions) in _methods(rows).items():
                m = _metrics([r["label"] for r in rows], scores, decisions)
                by_method.setdefault(method, []).append(m)
        table["families"][family] = {
            method: {
                key: (float(np.mean([m[key] for m in ms if m.get(key) is not None]))
                      if any(m.get(key) is not None for m in ms) else None)
                for key in ms[0]
            }
            for method, ms in by_method.items()
        }
    for name, cat in per_category.items():
        rows = cat["rows"]
        table["categories"][name] = {
            method: _metrics([r["label"] for r in rows], scores, decisions)
            for method, (scores, decisions) in _methods(rows).items()
        }
        table["categories"][name]["stated"] = cat["stated"]
        table["categories"][name]["seconds"] = cat["seconds"]
    for group in ("size_bucket", "visibility_bucket", "kind"):
        buckets = sorted({str(r[group]) for c in per_category.values() for r in c["rows"] if r["label"] == 1})
        table["buckets"][group] = {}
        for bucket in buckets:
            per_method: dict[str, list[dict]] = {}
            for cat in per_category.values():
                rows = [r for r in cat["rows"] if r["label"] == 0 or str(r[group]) == bucket]
                if not any(r["label"] == 1 for r in rows):
                    continue
                for method, (scores, decisions) in _methods(rows).items():
                    per_method.setdefault(method, []).append(_metrics([r["label"] for r in rows], scores, decisions))
            table["buckets"][group][bucket] = {
                method: {k: float(np.mean([m[k] for m in ms if m.get(k) is not None])) for k in ("image_auroc", "detect@0.01", "detection_rate")}
                for method, ms in per_method.items()
            }
    return table


def _f(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def render(name: str, table: dict, meta: dict) -> str:
    lines = [f"# Decisions: {name}", "", meta["about"], ""]
    lines += ["| family | method | AUROC | det@1% | det@2% | det@5% | accuracy | balanced | detection | false alarms | oracle gap |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for family, methods in table["families"].items():
        for method, m in methods.items():
            lines.append(f"| {family} | {method} | {_f(m.get('image_auroc'))} | {_f(m.get('detect@0.01'))} | {_f(m.get('detect@0.02'))} | "
                         f"{_f(m.get('detect@0.05'))} | {_f(m.get('accuracy'))} | {_f(m.get('balanced_accuracy'))} | "
                         f"{_f(m.get('detection_rate'))} | {_f(m.get('false_alarms'))} | {_f(m.get('oracle_gap'))} |")
    lines += ["", "Per category (all defects): measured false alarms on the test normals against the stated rate; "
              "the check is measured <= 2 x stated + 1 image.", "",
              "| category | method | AUROC | accuracy | false alarms | stated | within | fit s | ms / image |", "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for cat, methods in table["categories"].items():
        stated, seconds = methods["stated"], methods["seconds"]
        for method, m in methods.items():
            if method in ("stated", "seconds"):
                continue
            key = ("old" if method.startswith("old") else "new" if method.startswith("new")
                   else f"old-member:{method.split(' ')[0]}" if method.endswith(", old") else f"member:{method.split(' ')[0]}")
            rate = stated.get(key)
            within = "–" if rate is None or m.get("false_alarms") is None else (
                "yes" if m["false_alarms"] <= 2 * rate + 1 / max(m["normal"], 1) else "NO")
            fit = seconds["fit_old"] if key == "old" else seconds["fit_new"] if key == "new" else None
            per_image = 1000 * seconds["score_per_image"]
            lines.append(f"| {cat} | {method} | {_f(m.get('image_auroc'))} | {_f(m.get('accuracy'))} | {_f(m.get('false_alarms'))} | "
                         f"{_f(rate)} | {within} | {'' if fit is None else f'{fit:.0f}'} | "
                         f"{'' if fit is None else f'{per_image:.0f}'} |")
    for group, buckets in table["buckets"].items():
        lines += ["", f"| {group} | method | AUROC | det@1% | calibrated detection |", "|---|---|---:|---:|---:|"]
        for bucket, methods in buckets.items():
            for method, m in methods.items():
                lines.append(f"| {bucket} | {method} | {_f(m.get('image_auroc'))} | {_f(m.get('detect@0.01'))} | {_f(m.get('detection_rate'))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    global EXPERT, OLD_EXPERT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="output path without extension")
    parser.add_argument("--normals", type=int, default=200)
    parser.add_argument("--expert", default=EXPERT, help=f"fused experts to decide with (default {EXPERT})")
    parser.add_argument("--shots", type=int, default=0, help="few-shot references drawn per category (0: one-class on --normals)")
    parser.add_argument("--draws", type=int, default=1, help="few-shot: reference draws (seeds 0..draws-1), rows pooled")
    parser.add_argument("--categories", default=None, help="comma-separated (default: all)")
    parser.add_argument("--old", choices=("previous", "default", "kfold-max"), default="previous",
                        help="what 'old' is: the previous release's default (default), the current default, "
                             "or k folds + max fusion")
    parser.add_argument("--old-expert", default=None,
                        help="the old side's fused experts (default: --expert), e.g. the default without a new member")
    parser.add_argument("--set", action="append", default=[], metavar="MEMBER.KEY=VALUE",
                        help="a setting the new side changes (repeatable), e.g. patchcore.score_sigma=2")
    args = parser.parse_args()
    EXPERT = args.expert
    OLD_EXPERT = args.old_expert
    for item in args.set:
        target, _, value = item.partition("=")
        member, _, key = target.partition(".")
        if not (member and key and value):
            parser.error(f"--set {item!r}: expected MEMBER.KEY=VALUE")
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        NEW_SETTINGS.setdefault(member, {})[key] = parsed

    from myriad.datasets import read_mvtec

    manifest_path = args.data / "devset.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"files": []}
    index = {"/".join(Path(f["image"]).parts[-4:]): f for f in manifest.get("files", [])}
    wanted = args.categories.split(",") if args.categories else None
    categories = read_mvtec(args.data, wanted)
    per_category = {}
    for category in categories:
        for draw in range(args.draws if args.shots else 1):
            key = category.name if not args.shots or args.draws == 1 else f"{category.name}#{draw}"
            per_category[key] = score_category(
                category, index, args.normals, lambda m: print(m, flush=True), args.shots, draw, args.old
            )
    table = summarise(per_category)
    meta = {
        "about": (f"{EXPERT}, {f'{args.shots}-shot ({args.draws} draws)' if args.shots else f'one-class on up to {args.normals} normals (all a category has when fewer)'}, data {args.data.name} "
                  f"({manifest.get('spec', {}).get('preset', 'default')} preset); machine {platform.processor() or platform.machine()}. "
                  + (OLD_ABOUT[args.old]) + (f"old experts {OLD_EXPERT}; " if OLD_EXPERT else "") +
                  "new = the current default" + (f" with {NEW_SETTINGS} changed" if NEW_SETTINGS else "") + " (leave-one-out calibration where the expert can, tail-evidence fusion, every member's defaults). "
                  "AUROC and detection at fixed false-alarm rates on test normals: mean over categories; decisions: mean over categories."),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"meta": meta, "summary": table, "per_category": per_category}, indent=1))
    Path(f"{args.out}.md").write_text(render(args.data.name, table, meta))
    print(render(args.data.name, table, meta))


if __name__ == "__main__":
    main()
