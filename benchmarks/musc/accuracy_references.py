"""MuSc accuracy with fewer reference images per image: exact all-pairs against seeded random subsets.

For each category of an MVTec-layout dev set, the whole test split plus ``--controls``
training normals (what the host's in-batch calibration appends) is scored as ONE batch,
as the paper scores a class. Features are extracted once per category; mutual scoring
then runs once per setting: ``exact`` (every other image, the paper) and
``references=R`` for each ``--references`` value and ``--seeds`` seed.

Reported per category and setting: image AUROC (RsCIN score), pixel AUROC (maps and
masks at ``--metric-size``), the accuracy at the in-batch threshold (the maximum
control score, as :class:`myriad.detector.Detector` decides) and the CPU seconds of
the scoring step (``time.process_time``: CPU time, less sensitive to other jobs than
wall time, but still only relative on a shared machine).

Example (the numbers in myriad_experts_musc/README.md, *Scaling*)::

    .venv/bin/myriad make-devset /tmp/musc_big --categories brick,weave --train 16 \\
        --test-good 130 --test-defect 4 -q
    .venv/bin/python benchmarks/musc/accuracy_references.py --data /tmp/musc_big \\
        --output benchmarks/musc/accuracy_references.json

Writes JSON and a Markdown table beside it (``.md``), atomically, when everything is done.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="MVTec-layout root (e.g. from `myriad make-devset`)")
    parser.add_argument("--categories", default=None, help="comma-separated categories (default: all)")
    parser.add_argument("--references", default="16,24,32,48", help="comma-separated reference counts to try")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds of the reference subsets")
    parser.add_argument("--controls", type=int, default=16, help="training normals appended to the batch")
    parser.add_argument("--config", default="{}", help="extra MuSc settings as JSON")
    parser.add_argument("--metric-size", type=int, default=128, help="side of maps/masks for pixel AUROC")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/musc/accuracy_references.json"))
    return parser.parse_args(argv)


def evaluate(expert: Any, grids: list, embeddings: Any, n_test: int, labels: list[int], masks: list, size: int) -> dict:
    """Score the extracted batch with the expert's current config; metrics on the first ``n_test`` images."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from myriad.metrics import image_auroc, pixel_auroc
    from myriad_experts_musc.scoring import rscin

    start = time.process_time()
    maps = expert.score_maps(grids)
    cpu = time.process_time() - start
    scores = rscin(maps.flatten(1).amax(dim=1).double(), embeddings, expert.rscin_k).numpy()
    test, controls = scores[:n_test], scores[n_test:]
    small = F.interpolate(maps[:n_test, None], size=(size, size), mode="bilinear", align_corners=True)[:, 0].numpy()
    row: dict[str, Any] = {
        "image_auroc": round(float(image_auroc(labels, test)), 4),
        "pixel_auroc": round(float(pixel_auroc(masks, list(small))), 4),
        "scoring_cpu_s": round(cpu, 1),
    }
    if len(controls):
        predicted = test > controls.max()
        row["accuracy_at_control_max"] = round(float(np.mean(predicted == np.asarray(labels, dtype=bool))), 4)
    return row


def main(argv: list[str] | None = None) -> None:
    """Run every setting on every category and write the JSON + Markdown report."""
    import torch

    from myriad import load_image
    from myriad.datasets import load_mask, read_mvtec
    from myriad.io import atomic_write_text
    from myriad.plugins import get_expert

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    references = [int(r) for r in args.references.split(",") if r]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    extra = json.loads(args.config)
    categories = read_mvtec(args.data, args.categories.split(",") if args.categories else None)
    results: dict[str, Any] = {"data": str(args.data), "config": extra, "controls": args.controls, "threads": args.threads,
                               "categories": {}}
    for category in categories:
        tests = category.test
        images = [load_image(s.path) for s in tests] + [load_image(s.path) for s in category.train[: args.controls]]
        labels = [s.label for s in tests]
        masks = [load_mask(s, (args.metric_size, args.metric_size)) for s in tests]
        expert = get_expert("musc", {"progress": False, **extra})
        grids, embeddings = expert.extract(images)
        rows: dict[str, Any] = {"images": len(images), "test": len(tests), "anomalous": int(sum(labels))}
        settings: list[tuple[str, dict]] = [("exact", {"references": None})]
        settings += [(f"R={r} seed={s}", {"references": r, "seed": s}) for r in references for s in seeds]
        for name, overrides in settings:
            expert.config = expert.config.model_copy(update=overrides)
            rows[name] = evaluate(expert, grids, embeddings, len(tests), labels, masks, args.metric_size)
        results["categories"][category.name] = rows
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output, json.dumps(results, indent=2) + "\n")
    atomic_write_text(args.output.with_suffix(".md"), to_markdown(results))


def to_markdown(results: dict[str, Any]) -> str:
    """One table row per category and setting."""
    lines = [
        "# MuSc: exact all-pairs vs random reference subsets (one batch per category)",
        "",
        f"Data `{results['data']}`, {results['controls']} control normals per batch, {results['threads']} threads, "
        f"extra config `{json.dumps(results['config'])}`. CPU seconds are `time.process_time` of the scoring step "
        "on a shared machine: relative only.",
        "",
        "| category | images | setting | image AUROC | pixel AUROC | accuracy (max control) | scoring CPU s |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, rows in results["categories"].items():
        for setting, row in rows.items():
            if isinstance(row, dict):
                lines.append(
                    f"| {name} | {rows['images']} | {setting} | {row['image_auroc']:.3f} | {row['pixel_auroc']:.3f} | "
                    f"{row.get('accuracy_at_control_max', float('nan')):.3f} | {row['scoring_cpu_s']:.0f} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
