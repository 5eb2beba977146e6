"""Choose the default stages and input size of PatchCore's embedded EfficientNet-Lite0 (run by hand).

For each candidate (layers, image_size):

- accuracy: per texture (brick, grass, gravel) fit on 40 normal 256 px crops, score
  20 normal crops, 20 with a small defect (thin scratch) and 20 with a large one
  (foreign-material stain); image AUROC and pixel AUROC per defect size;
- speed: fit on 200 brick crops (coreset 0.1) and time predict at batch 8.

Writes ``benchmarks/results/patchcore_stages.json`` and ``.md``. Usage::

    .venv/bin/python benchmarks/patchcore/bench_stages.py [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from synthetic import TEXTURES, defect_set, normal_crops  # noqa: E402

CANDIDATES = [
    ((2, 3), 256),
    ((2, 3), 192),
    ((2, 3), 128),
    ((3, 4), 256),
    ((3, 4), 320),
    ((1, 2), 128),
    ((2, 4), 256),
]


def evaluate(layers: tuple[int, ...], size: int, threads: int, n_train: int, n_test: int) -> dict:
    import numpy as np

    from myriad.metrics import image_auroc, pixel_auroc
    from myriad.plugins import get_expert

    config = {"layers": list(layers), "image_size": size, "device": "cpu", "num_threads": threads}
    result: dict = {"layers": list(layers), "image_size": size, "textures": {}}
    for name in TEXTURES:
        expert = get_expert("patchcore", config).fit(normal_crops(name, n_train, 256, seed=0))
        normal = expert.predict(normal_crops(name, n_test, 256, seed=1000))
        row = {}
        for kind, seed in (("small", 2000), ("large", 3000)):
            images, masks = defect_set(name, n_test, kind, 256, seed=seed)
            preds = expert.predict(images)
            labels = [0] * len(normal) + [1] * len(preds)
            scores = [p.score for p in normal] + [p.score for p in preds]
            all_masks = [np.zeros_like(masks[0])] * len(normal) + masks
            maps = [p.anomaly_map for p in normal] + [p.anomaly_map for p in preds]
            hit = np.mean([m.ravel()[p.anomaly_map.argmax()] for m, p in zip(masks, preds)])
            row[kind] = {
                "image_auroc": round(image_auroc(labels, scores), 4),
                "pixel_auroc": round(pixel_auroc(all_masks, maps), 4),
                "peak_on_defect": round(float(hit), 3),
            }
        result["textures"][name] = row
    for kind in ("small", "large"):
        for metric in ("image_auroc", "pixel_auroc", "peak_on_defect"):
            values = [result["textures"][t][kind][metric] for t in TEXTURES]
            result[f"{kind}_{metric}"] = round(float(np.mean(values)), 4)
    return result


def speed(layers: tuple[int, ...], size: int, threads: int, n_fit: int) -> dict:
    from myriad.plugins import get_expert

    config = {"layers": list(layers), "image_size": size, "device": "cpu", "num_threads": threads}
    train = normal_crops("brick", n_fit, 256, seed=0)
    expert = get_expert("patchcore", config)
    start = time.perf_counter()
    expert.fit(train)
    fit_s = time.perf_counter() - start
    test = normal_crops("brick", 16, 256, seed=5)
    expert.predict(test[:8])  # warm-up
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        expert.predict(test)
        timings.append((time.perf_counter() - start) / len(test) * 1e3)
    grid = expert.grid or (0, 0)
    patches = grid[0] * grid[1]
    return {
        "search_gflop_per_image": round(2 * patches * expert.bank.size * expert.bank.dim / 1e9, 2),
        "fit_s": round(fit_s, 2),
        "predict_ms_per_image": round(min(timings), 1),
        "bank_size": expert.bank.size if expert.bank else 0,
        "feature_dim": expert.bank.dim if expert.bank else 0,
        "grid": list(grid),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer images (smoke run)")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "patchcore_stages"))
    args = parser.parse_args()
    n_train, n_test, n_fit = (10, 6, 20) if args.quick else (40, 20, 200)
    rows = []
    for layers, size in CANDIDATES:
        t0 = time.perf_counter()
        row = evaluate(layers, size, args.threads, n_train, n_test)
        row.update(speed(layers, size, args.threads, n_fit))
        row["bench_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "textures"}), flush=True)
    meta = {
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "n_train_accuracy": n_train,
        "n_test_per_set": n_test,
        "n_fit_speed": n_fit,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "candidates": rows}, indent=2))
    lines = [
        "# PatchCore: choosing EfficientNet-Lite0 stages and input size",
        "",
        f"Threads {args.threads}, load average at the end {tuple(round(x, 2) for x in meta['load_average'])} "
        f"on {meta['cpu_count']} CPUs. Accuracy: mean over brick/grass/gravel, fit on {n_train} normal crops, "
        f"{n_test} test images per set. Speed: fit on {n_fit} brick crops (coreset 0.1), predict at batch 8.",
        "",
        "| layers | size | grid | D | small I-AUROC | small P-AUROC | small peak hit | large I-AUROC | large P-AUROC "
        "| large peak hit | bank | search GFLOP/img | fit 200 (s) | predict ms/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layers']} | {r['image_size']} | {r['grid'][0]}x{r['grid'][1]} | {r['feature_dim']} "
            f"| {r['small_image_auroc']:.3f} | {r['small_pixel_auroc']:.3f} | {r['small_peak_on_defect']:.2f} "
            f"| {r['large_image_auroc']:.3f} | {r['large_pixel_auroc']:.3f} | {r['large_peak_on_defect']:.2f} "
            f"| {r['bank_size']} | {r['search_gflop_per_image']:.2f} | {r['fit_s']:.1f} | {r['predict_ms_per_image']:.1f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
