"""PatchCore's certified search against the exact one, on the calibrated scale users see (by hand, not a test).

PatchCore (the default config, exact search) is fitted with its calibration on one category's normals; the same
fitted expert then scores the same test images with ``search="exact"`` and with ``search="certified"`` at several
``certify_level`` values (None: only the image score exact). Per way: ms per image (batch 8), the share of patches
searched exactly, the largest difference of the calibrated image score, the calibrated map's differences (largest,
99th percentile, share of pixels off by more than 0.05 on the 0-1 scale whose threshold is 0.5) and decisions
changed. Writes ``OUT.json`` and ``OUT.md``::

    .venv/bin/python benchmarks/patchcore/bench_certified.py --data DATA/realistic --category brick \\
        --out benchmarks/results/patchcore_certified
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def _level(text: str) -> float | None:
    return None if text == "none" else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--category", action="append", help="repeatable (default brick)")
    parser.add_argument("--normals", type=int, default=200)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--levels", default="none,3,2,1", help="certify_level values, comma-separated ('none')")
    parser.add_argument("--shares", default="", help="comma-separated probed shares of the IVF lists to try too "
                        "(e.g. 0.125; the default share always runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import numpy as np
    import torch

    from myriad.detector import Detector
    from myriad.images import load_image
    from myriad_experts_patchcore import memory_bank

    torch.set_num_threads(args.threads)
    searched = [0]
    original = memory_bank.MemoryBank.search

    def counting(self: Any, q: Any, k: int = 1) -> Any:
        searched[0] += len(q)
        return original(self, q, k)

    memory_bank.MemoryBank.search = counting  # type: ignore[method-assign]
    levels = [_level(t) for t in args.levels.split(",")]
    results: list[dict] = []
    for category in args.category or ["brick"]:
        root = args.data / category
        fit = [load_image(p) for p in sorted((root / "train" / "good").glob("*.png"))[: args.normals]]
        tests = sorted((root / "test").rglob("*.png"))
        step = max(1, len(tests) // args.images)
        test = [load_image(p) for p in tests[::step][: args.images]]
        detector = Detector("patchcore", {"num_threads": args.threads})
        detector.fit(fit)
        expert = detector.expert
        base = expert.config
        patches = None
        ways: list[tuple[str, dict]] = [("exact", {"search": "exact"})]
        ways += [(f"certified, level {lv}", {"search": "certified", "certify_level": lv}) for lv in levels]
        ways += [(f"certified, probed {sh}, level {lv}", {"search": "certified", "certify_level": lv, "certify_probed_share": float(sh)})
                 for sh in filter(None, args.shares.split(",")) for lv in levels]
        outputs: dict[str, Any] = {}
        for name, update in ways * 2:  # twice: the second pass is timed warm
            expert.config = base.model_copy(update=update)
            searched[0] = 0
            start = time.perf_counter()
            dets = [d for i in range(0, len(test), 8) for d in detector.detect(test[i : i + 8])]
            seconds = time.perf_counter() - start
            if name == "exact":
                patches = searched[0]
            outputs[name] = (dets, seconds, searched[0])
        exact = outputs["exact"][0]
        for name, _ in ways:
            dets, seconds, count = outputs[name]
            diffs = np.concatenate([np.abs(a.anomaly_map - b.anomaly_map).ravel() for a, b in zip(exact, dets)])
            results.append({
                "category": category, "way": name, "ms_per_image": 1000 * seconds / len(test),
                "searched_share": count / patches if patches else None,
                "score_diff_max": max(abs(a.score - b.score) for a, b in zip(exact, dets)),
                "map_diff_max": float(diffs.max()), "map_diff_p99": float(np.percentile(diffs, 99)),
                "map_share_over_005": float((diffs > 0.05).mean()),
                "decisions_changed": sum(a.anomalous != b.anomalous for a, b in zip(exact, dets)),
                "images": len(test),
            })
            print(json.dumps(results[-1]), flush=True)
    about = (f"{args.data.name}, {args.normals} normals, {args.images} test images per category, batch 8, "
             f"{args.threads} threads, {platform.processor() or platform.machine()}")
    f = lambda v: "-" if v is None else f"{v:.3f}"
    lines = ["# PatchCore: certified search against exact, calibrated scale", "", about, "",
             "| category | search | ms / image | patches searched exactly | score diff (max) | map diff max | map diff p99 | pixels off > 0.05 | decisions changed |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['category']} | {r['way']} | {r['ms_per_image']:.0f} | {f(r['searched_share'])} | {r['score_diff_max']:.2e} | "
                     f"{f(r['map_diff_max'])} | {f(r['map_diff_p99'])} | {f(r['map_share_over_005'])} | {r['decisions_changed']} / {r['images']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"about": about, "results": results}, indent=1))
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
