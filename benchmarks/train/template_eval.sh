#!/usr/bin/env bash
# Held-out comparison of the two prompt templates (issue #4): evaluates the weights of
# benchmarks/train/template_{reference,chat}.toml on the development benchmark (PatchCore one-class
# and 1-shot x 2 draws), both at once on one thread each. Writes benchmarks/results/lmm_template_devset.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-runs/devset}
OUT=${OUT:-runs/template-eval}
MYRIAD=${MYRIAD:-.venv/bin/myriad}
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
[ -d "$DATA" ] || "$MYRIAD" make-devset "$DATA" -q
for t in reference chat; do
  (
    "$MYRIAD" eval --expert patchcore --data "$DATA" --lmm "runs/tc-$t/trainable.safetensors" -q --no-plots \
        --output "$OUT/$t/one_class/report.json"
    "$MYRIAD" eval --expert patchcore --data "$DATA" --k-shot 1 --runs 2 --lmm "runs/tc-$t/trainable.safetensors" -q --no-plots \
        --output "$OUT/$t/1_shot/report.json"
  ) &
done
wait
.venv/bin/python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = ["| template | setting | Myriad-mini accuracy | expert accuracy | unknown answers | images |", "|---|---|---|---|---|---|"]
summary = {}
for t in ["reference", "chat"]:
    for s in ["one_class", "1_shot"]:
        mean = json.loads((out / t / s / "report.json").read_text())["mean"]
        preds = [json.loads(l) for l in (out / t / s / "report_predictions.jsonl").read_text().splitlines() if l.strip()]
        unknown = sum(p.get("lmm_decision") == "unknown" for p in preds)
        summary[f"{t}/{s}"] = {"accuracy": mean["accuracy"], "expert_accuracy": mean["expert_accuracy"], "unknown": unknown, "images": len(preds)}
        rows.append(f"| {t} | {s} | {mean['accuracy']:.3f} | {mean['expert_accuracy']:.3f} | {unknown} | {len(preds)} |")
res = pathlib.Path("benchmarks/results")
(res / "lmm_template_devset.json").write_text(json.dumps(summary, indent=2))
(res / "lmm_template_devset.md").write_text(
    "# Prompt template comparison on the held-out devset (mini, 80 + 30 training steps each)\n\n" + "\n".join(rows) + "\n")
print("\n".join(rows))
PY
