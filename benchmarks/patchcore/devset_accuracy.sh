#!/usr/bin/env bash
# PatchCore on the development benchmark (default devset, seed 0): one-class and 1/2/4-shot.
# Writes benchmarks/results/patchcore_devset/<mode>/report.{json,md} and a summary table.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-runs/devset}
OUT=benchmarks/results/patchcore_devset
[ -d "$DATA" ] || myriad make-devset "$DATA" -q
myriad eval --expert patchcore --data "$DATA" --output "$OUT/one_class/report.json" -q --examples 4
for k in 1 2 4; do
  myriad eval --expert patchcore --data "$DATA" --k-shot "$k" --runs 2 --output "$OUT/${k}_shot/report.json" -q --examples 4
done
python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = ["| setting | image AUROC | pixel AUROC | AUPRO | F1-max | expert accuracy | ms/image |", "|---|---|---|---|---|---|---|"]
summary = {}
for name in ["one_class", "1_shot", "2_shot", "4_shot"]:
    mean = json.loads((out / name / "report.json").read_text())["mean"]
    summary[name] = mean
    f = lambda k: "-" if mean.get(k) is None else f"{mean[k]:.3f}"
    rows.append(f"| {name} | {f('image_auroc')} | {f('pixel_auroc')} | {f('aupro')} | {f('f1_max')} | {f('expert_accuracy')} | {mean.get('ms_per_image', 0):.0f} |")
(out / "summary.json").write_text(json.dumps(summary, indent=2))
(out / "summary.md").write_text("# PatchCore on the development benchmark (default devset, seed 0)\n\n" + "\n".join(rows) + "\n")
print("\n".join(rows))
PY
