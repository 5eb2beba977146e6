#!/usr/bin/env bash
# Myriad-mini (shipped weights, trained on PatchCore and patchcore+global maps only) fed by the other experts, without retraining:
# does the calibrated-map contract let a researcher swap the expert? Same held-out devset and expert settings as
# benchmarks/experts/devset_compare.sh; LMM accuracy from the parsed text answers next to each expert alone.
#   benchmarks/train/eval_mini_experts.sh [WEIGHTS]      (default: the shipped weights)
# Writes benchmarks/results/myriad_mini_experts_devset/<expert>_<setting>/report.* and summary.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/../.."
WEIGHTS=${1:-mini}
DATA=${DATA:-runs/devset}
OUT=${OUT:-benchmarks/results/myriad_mini_experts_devset}
MYRIAD=${MYRIAD:-.venv/bin/myriad}
PRECISION=${PRECISION:-auto}
[ -d "$DATA" ] || "$MYRIAD" make-devset "$DATA" -q
run() {  # name setting args...
  local name=$1 setting=$2; shift 2
  [ -f "$OUT/${name}_${setting}/report.json" ] || "$MYRIAD" eval --expert "$name" --data "$DATA" --lmm "$WEIGHTS" \
      --precision "$PRECISION" --output "$OUT/${name}_${setting}/report.json" -q --examples 3 "$@"
}
run patchcore one_class
run patchcore 4_shot --k-shot 4 --runs 2
run anomalygpt 4_shot --k-shot 4 --runs 2 --config '{"backbone": "efficientnet_lite0", "image_size": 224}'
run aprilgan 4_shot --k-shot 4 --runs 2 --config '{"mode": "few_shot", "few_shot_backbone": "efficientnet_lite0", "zero_shot_branch": false}'
run musc zero_shot --batch-size 32 --config '{"image_size": 192, "progress": false}'
.venv/bin/python - "$OUT" "$PRECISION" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = ["| expert | setting | Myriad-mini accuracy | expert accuracy | unknown answers | images (all runs) | image AUROC |",
        "|---|---|---|---|---|---|---|"]
summary = {}
for report in sorted(out.glob("*/report.json")):
    name, _, setting = report.parent.name.partition("_")
    mean = json.loads(report.read_text())["mean"]
    preds = [json.loads(l) for l in (report.parent / "report_predictions.jsonl").read_text().splitlines() if l.strip()]
    unknown = sum(p.get("lmm_decision") == "unknown" for p in preds)
    summary[report.parent.name] = {**mean, "unknown_total": unknown, "images_total": len(preds)}
    f = lambda k: "-" if mean.get(k) is None else f"{mean[k]:.3f}"
    rows.append(f"| {name} | {setting} | {f('accuracy')} | {f('expert_accuracy')} | {unknown} | {len(preds)} | {f('image_auroc')} |")
(out / "summary.json").write_text(json.dumps(summary, indent=2))
title = f"# Myriad-mini (LLM precision {sys.argv[2]}) with each expert, held-out development benchmark\n\n"
(out / "summary.md").write_text(title + "\n".join(rows) + "\n")
print("\n".join(rows))
PY
