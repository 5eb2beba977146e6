#!/usr/bin/env bash
# All four experts on the development benchmark (default devset, seed 0), embedded Lite0 backbone
# where the expert has one (no CLIP / ImageBind weights ship offline: AprilGAN runs its few-shot
# memory branch, AnomalyGPT its few-shot branch, MuSc zero-shot on Lite0 features).
# Writes benchmarks/results/experts_devset/<expert>_<setting>/report.{json,md} and summary.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-runs/devset}
OUT=benchmarks/results/experts_devset
MYRIAD=${MYRIAD:-.venv/bin/myriad}
[ -d "$DATA" ] || "$MYRIAD" make-devset "$DATA" -q
run() {  # name setting args...
  local name=$1 setting=$2; shift 2
  [ -f "$OUT/${name}_${setting}/report.json" ] || "$MYRIAD" eval --expert "$name" --data "$DATA" \
      --output "$OUT/${name}_${setting}/report.json" -q --examples 3 "$@"
}
run patchcore one_class
run patchcore 4_shot --k-shot 4
run anomalygpt 4_shot --k-shot 4 --config '{"backbone": "efficientnet_lite0", "image_size": 224}'
run aprilgan 4_shot --k-shot 4 --config '{"mode": "few_shot", "few_shot_backbone": "efficientnet_lite0", "zero_shot_branch": false}'
run musc zero_shot --batch-size 32 --config '{"image_size": 192, "progress": false}'
.venv/bin/python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = ["| expert | setting | image AUROC | pixel AUROC | AUPRO | expert accuracy | ms/image |", "|---|---|---|---|---|---|---|"]
summary = {}
for report in sorted(out.glob("*/report.json")):
    name, _, setting = report.parent.name.partition("_")
    mean = json.loads(report.read_text())["mean"]
    summary[report.parent.name] = mean
    f = lambda k: "-" if mean.get(k) is None else f"{mean[k]:.3f}"
    rows.append(f"| {name} | {setting} | {f('image_auroc')} | {f('pixel_auroc')} | {f('aupro')} | {f('expert_accuracy')} | {mean.get('ms_per_image', 0):.0f} |")
(out / "summary.json").write_text(json.dumps(summary, indent=2))
(out / "summary.md").write_text("# Vision experts on the development benchmark (default devset, seed 0, 2 CPU threads)\n\n" + "\n".join(rows) + "\n")
print("\n".join(rows))
PY
