"""How fast PatchCore's nearest-neighbour search can go while the image's largest patch distance stays exact.

A probe for the speed work (by hand, not a test): PatchCore (the default config) is fitted on the normals of one
category, the patch features of some test images are recorded as the expert queries its bank, and the same queries
are searched several ways in one run:

- ``flat``: FAISS's exact search (what ships);
- ``ivf``: an inverted-file index (``IndexIVFFlat``, ``nlist`` lists, ``nprobe`` probed): approximate, its
  distances are never below the exact ones;
- ``ivf + exact top``: the IVF search, then each image's top ``frac`` patches by approximate distance searched
  again exactly; when the largest of those exact distances is at least the smallest approximate one left out, no
  other patch can hold the image's maximum (every approximate distance bounds its exact one from above), so the
  image's largest distance is certified exact; an image that fails the check is searched exactly in full.

Reported per way: seconds, speed-up over ``flat``, the share of patches whose nearest neighbour is the exact one,
the largest over-estimate of an image's maximum, and (certified ways) how many images needed the full search.
Writes ``OUT.json`` and ``OUT.md``::

    .venv/bin/python benchmarks/patchcore/bench_search.py --data DATA/realistic --category brick \\
        --out benchmarks/results/patchcore_search
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def record_queries(data: Path, category: str, normals: int, images: int) -> tuple[Any, Any, int]:
    """Fit PatchCore on ``normals`` normal images; the bank and the queries of ``images`` test images (and their
    patches per image)."""
    import numpy as np

    from myriad.detector import Detector
    from myriad.images import load_image
    from myriad_experts_patchcore import memory_bank

    root = data / category
    fit = [load_image(p) for p in sorted((root / "train" / "good").glob("*.png"))[:normals]]
    tests = sorted((root / "test").rglob("*.png"))
    step = max(1, len(tests) // images)
    test = [load_image(p) for p in tests[::step][:images]]
    detector = Detector("patchcore", None)
    detector.fit(fit)
    queries: list[Any] = []
    original = memory_bank.MemoryBank.search

    def spy(self: Any, q: Any, k: int = 1) -> Any:
        queries.append(np.array(q, dtype=np.float32))
        return original(self, q, k)

    memory_bank.MemoryBank.search = spy  # type: ignore[method-assign]
    try:
        for start in range(0, len(test), 8):
            detector.detect(test[start : start + 8])
    finally:
        memory_bank.MemoryBank.search = original  # type: ignore[method-assign]
    q = np.concatenate(queries)
    bank = detector.base_expert.bank.features.astype(np.float32)
    return bank, q, len(q) // len(test)


def certified_max(ivf: Any, flat: Any, queries: Any, per: int, frac: float) -> tuple[Any, int]:
    """Each image's patch distances: IVF everywhere, exact on its top ``frac`` (full exact search when the top does
    not certify the maximum); returns the distances (images x patches) and the number of full searches."""
    import numpy as np

    approx, _ = ivf.search(queries, 1)
    d = approx[:, 0].reshape(-1, per).copy()
    top, fulls = max(1, int(frac * per)), 0
    for i in range(len(d)):
        order = np.argsort(d[i])[::-1][:top]
        cut = d[i][order[-1]]
        exact, _ = flat.search(np.ascontiguousarray(queries[i * per + order]), 1)
        d[i][order] = exact[:, 0]
        if d[i][order].max() < cut:
            whole, _ = flat.search(np.ascontiguousarray(queries[i * per : (i + 1) * per]), 1)
            d[i] = whole[:, 0]
            fulls += 1
    return d, fulls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--category", default="brick")
    parser.add_argument("--normals", type=int, default=200)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import faiss
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    bank, queries, per = record_queries(args.data, args.category, args.normals, args.images)
    flat = faiss.IndexFlatL2(bank.shape[1])
    flat.add(bank)
    started = time.perf_counter()
    exact, nearest = flat.search(queries, 1)
    flat_s = time.perf_counter() - started
    exact_max = exact[:, 0].reshape(-1, per).max(1)
    rows: list[dict[str, Any]] = [{"way": "flat", "seconds": flat_s, "speedup": 1.0, "exact_nn": 1.0, "max_over": 0.0}]
    for nlist in (64, 256):
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(bank.shape[1]), bank.shape[1], nlist)
        ivf.train(bank)
        ivf.add(bank)
        for nprobe in (4, 8, 16, 32):
            ivf.nprobe = nprobe
            started = time.perf_counter()
            approx, found = ivf.search(queries, 1)
            seconds = time.perf_counter() - started
            over = float(np.max(approx[:, 0].reshape(-1, per).max(1) / exact_max - 1))
            rows.append({"way": f"ivf nlist={nlist} nprobe={nprobe}", "seconds": seconds, "speedup": flat_s / seconds,
                         "exact_nn": float(np.mean(found[:, 0] == nearest[:, 0])), "max_over": over})
            if nlist == 256 and nprobe in (8, 16):
                for frac in (0.01, 0.03):
                    started = time.perf_counter()
                    d, fulls = certified_max(ivf, flat, queries, per, frac)
                    seconds = time.perf_counter() - started
                    rows.append({"way": f"ivf nlist=256 nprobe={nprobe} + exact top {frac:.0%}", "seconds": seconds,
                                 "speedup": flat_s / seconds, "exact_nn": None,
                                 "max_over": float(np.max(d.max(1) / exact_max - 1)), "full_searches": fulls})
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "threads": args.threads,
              "data": str(args.data), "category": args.category, "normals": args.normals, "images": args.images,
              "bank": list(bank.shape), "queries": int(len(queries)), "patches_per_image": per, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# PatchCore's search: exact, approximate, and approximate with a certified exact maximum", "",
        f"`benchmarks/patchcore/bench_search.py`: default PatchCore fitted on {args.normals} normals of "
        f"{args.category} ({args.data}); bank {bank.shape[0]} x {bank.shape[1]}; {len(queries)} queries of "
        f"{args.images} test images ({per} patches each); {args.threads} threads, {result['machine']}. "
        "`max over`: the largest relative over-estimate of an image's largest patch distance (0: exact).", "",
        "| way | seconds | speed-up | exact nearest neighbour | max over | full searches |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        nn = "" if r["exact_nn"] is None else f"{r['exact_nn']:.4f}"
        lines.append(f"| {r['way']} | {r['seconds']:.3f} | {r['speedup']:.2f} | {nn} | {r['max_over']:.4f} | "
                     f"{r.get('full_searches', '')} |")
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
