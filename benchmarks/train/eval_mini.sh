#!/usr/bin/env bash
# Myriad-mini vs its expert alone on the held-out development benchmark (default devset: brick, grass, gravel,
# weave, wood with the evaluation defect kinds; none of its images, textures or defect kinds is trained on).
# PatchCore one-class and 1/4-shot (2 draws each); LMM accuracy from the parsed text answers.
#   benchmarks/train/eval_mini.sh [WEIGHTS]     (default: the shipped weights, --lmm mini)
#   PRECISION=int8 OUT=benchmarks/results/myriad_mini_devset_int8 benchmarks/train/eval_mini.sh   (int8 LLM)
# Writes benchmarks/results/myriad_mini_devset/<setting>/report.{json,md,jsonl} and summary.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/../.."
WEIGHTS=${1:-mini}
DATA=${DATA:-runs/devset}
OUT=${OUT:-benchmarks/results/myriad_mini_devset}
MYRIAD=${MYRIAD:-.venv/bin/myriad}
PRECISION=${PRECISION:-float32}
[ -d "$DATA" ] || "$MYRIAD" make-devset "$DATA" -q
"$MYRIAD" eval --expert patchcore --data "$DATA" --lmm "$WEIGHTS" --precision "$PRECISION" --output "$OUT/one_class/report.json" -q --examples 3
for k in 1 4; do
  "$MYRIAD" eval --expert patchcore --data "$DATA" --k-shot "$k" --runs 2 --lmm "$WEIGHTS" --precision "$PRECISION" \
      --output "$OUT/${k}_shot/report.json" -q --examples 3
done
.venv/bin/python - "$OUT" "$PRECISION" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = ["| PatchCore setting | Myriad-mini accuracy | expert accuracy | unknown answers (all runs) | images (all runs) | image AUROC | pixel AUROC | AUPRO |",
        "|---|---|---|---|---|---|---|---|"]
summary = {}
for name in ["one_class", "1_shot", "4_shot"]:
    report = json.loads((out / name / "report.json").read_text())
    mean = report["mean"]
    summary[name] = mean
    f = lambda k: "-" if mean.get(k) is None else f"{mean[k]:.3f}"
    preds = [json.loads(line) for line in (out / name / "report_predictions.jsonl").read_text().splitlines() if line.strip()]
    unknown = sum(p.get("lmm_decision") == "unknown" for p in preds)
    mean["unknown_total"], mean["images_total"] = unknown, len(preds)
    rows.append(f"| {name} | {f('accuracy')} | {f('expert_accuracy')} | {unknown} | {len(preds)} | {f('image_auroc')} | {f('pixel_auroc')} | {f('aupro')} |")
(out / "summary.json").write_text(json.dumps(summary, indent=2))
precision = sys.argv[2]
(out / "summary.md").write_text(f"# Myriad-mini ({precision} LLM) vs PatchCore alone on the held-out development benchmark\n\n" + "\n".join(rows) + "\n")
print("\n".join(rows))
PY
