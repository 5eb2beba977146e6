"""Choose the embedded EfficientNet-Lite0 stages and input size of MuSc and of the few-shot branches (run by hand).

Synthetic defects on 160 px crops of scikit-image's brick texture ("hard" set: a small
gravel patch, a thin faint scratch, a faint stain):

- MuSc (zero-shot, transductive): 20 normal + 6 defective crops scored as ONE batch;
  image AUROC with and without RsCIN, pixel AUROC, peak-hit (the map's maximum lies on
  the defect), ms/image.
- Few-shot (AnomalyGPT's branch; AprilGAN's memory branch uses the same cosine nearest
  neighbour): references = 1 or 4 normal crops, queries = 20 normal + 6 defective crops.

This is the measurement behind the defaults (MuSc: stages 2, 3 at 320 px; few-shot:
stages 2, 3 at 224 px) and the tables in the plugins' READMEs. Writes
``benchmarks/results/experts_stages.json`` and ``.md``. Takes ~15 minutes on 2 cores::

    .venv/bin/python benchmarks/experts/bench_stages.py [--skip-musc] [--skip-few-shot]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results"
MUSC_CANDIDATES = [((2, 3), 256), ((2, 3), 320), ((3,), 320), ((3, 4), 320), ((2,), 256)]
FEW_SHOT_CANDIDATES = [(1, 2), (2, 3), (1, 2, 3), (2,), (3,), (2, 3, 4)]


def brick_set(n_normal: int, n_defect: int, size: int = 160, seed: int = 0) -> tuple[list, list, list]:
    """Brick crops; the last ``n_defect`` carry a subtle defect. Returns images, masks, labels."""
    import numpy as np
    import skimage.data
    from skimage.draw import disk, line_aa

    rng = np.random.default_rng(seed)
    brick = skimage.data.brick().astype(np.float32)
    gravel = skimage.data.gravel().astype(np.float32)
    images, masks = [], []
    for i in range(n_normal + n_defect):
        y, x = rng.integers(0, 512 - size, 2)
        crop = brick[y : y + size, x : x + size].copy()
        mask = np.zeros((size, size), bool)
        if i >= n_normal:
            kind = (i - n_normal) % 3
            s = size // 10
            cy, cx = rng.integers(s, size - 2 * s, 2)
            if kind == 0:  # foreign texture patch
                gy, gx = rng.integers(0, 512 - s, 2)
                crop[cy : cy + s, cx : cx + s] = gravel[gy : gy + s, gx : gx + s]
                mask[cy : cy + s, cx : cx + s] = True
            elif kind == 1:  # thin faint scratch
                for t in range(-1, 1):
                    rr, cc, _ = line_aa(cy + t, cx, cy + s + t, cx + 2 * s)
                    ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
                    crop[rr[ok], cc[ok]] = 70
                    mask[rr[ok], cc[ok]] = True
            else:  # faint stain
                rr, cc = disk((cy + s // 2, cx + s // 2), s // 2, shape=crop.shape)
                crop[rr, cc] = np.clip(crop[rr, cc] + 35, 0, 255)
                mask[rr, cc] = True
        images.append(np.repeat(np.clip(crop, 0, 255).astype(np.uint8)[..., None], 3, axis=2))
        masks.append(mask)
    return images, masks, [0] * n_normal + [1] * n_defect


def musc_rows() -> list[dict]:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from myriad.plugins import get_expert

    images, masks, labels = brick_set(20, 6)
    rows = []
    for layers, size in MUSC_CANDIDATES:
        expert = get_expert("musc", {"layers": list(layers), "image_size": size, "progress": False})
        start = time.perf_counter()
        preds = expert.predict(images)
        ms = 1000 * (time.perf_counter() - start) / len(images)
        scores = [p.score for p in preds]
        raw = [float(p.anomaly_map.max()) for p in preds]
        pixel = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([p.anomaly_map.ravel() for p in preds]))
        hits = [m[np.unravel_index(p.anomaly_map.argmax(), m.shape)] for p, m in zip(preds[20:], masks[20:])]
        rows.append({"expert": "musc", "layers": list(layers), "image_size": size,
                     "image_auroc_rscin": round(roc_auc_score(labels, scores), 3), "image_auroc_raw": round(roc_auc_score(labels, raw), 3),
                     "pixel_auroc": round(pixel, 3), "peak_hit": round(float(np.mean(hits)), 2), "ms_per_image": round(ms)})
        print(rows[-1], flush=True)
    return rows


def few_shot_rows() -> list[dict]:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from myriad.plugins import get_expert

    images, masks, labels = brick_set(24, 6, seed=3)
    refs, queries, q_labels, q_masks = images[:4], images[4:], labels[4:], masks[4:]
    rows = []
    for layers in FEW_SHOT_CANDIDATES:
        for size in (224, 320):
            for k in (1, 4):
                expert = get_expert("anomalygpt", {"backbone": "efficientnet_lite0", "layers": list(layers), "image_size": size})
                expert.fit(refs[:k])
                start = time.perf_counter()
                preds = expert.predict(queries)
                ms = 1000 * (time.perf_counter() - start) / len(queries)
                pixel = roc_auc_score(np.concatenate([m.ravel() for m in q_masks]), np.concatenate([p.anomaly_map.ravel() for p in preds]))
                rows.append({"expert": "few-shot (anomalygpt)", "layers": list(layers), "image_size": size, "k": k,
                             "image_auroc": round(roc_auc_score(q_labels, [p.score for p in preds]), 3),
                             "pixel_auroc": round(pixel, 3), "ms_per_image": round(ms)})
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-musc", action="store_true")
    parser.add_argument("--skip-few-shot", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = ([] if args.skip_musc else musc_rows()) + ([] if args.skip_few_shot else few_shot_rows())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "experts_stages.json").write_text(json.dumps(rows, indent=2))
    lines = ["# Embedded EfficientNet-Lite0: stage / size choice (synthetic brick defects)", ""]
    for expert in sorted({r["expert"] for r in rows}):
        subset = [r for r in rows if r["expert"] == expert]
        keys = [k for k in subset[0] if k != "expert"]
        lines += [f"## {expert}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in subset] + [""]
    (RESULTS / "experts_stages.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'experts_stages.json'} and .md")


if __name__ == "__main__":
    main()
