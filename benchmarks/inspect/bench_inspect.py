"""``myriad inspect`` speed: Myriad-mini + PatchCore few-shot, per image after fitting, on 2 CPU cores.

    .venv/bin/python benchmarks/inspect/bench_inspect.py [--images 16] [--batch 8] [--threads 2] [--lmm mini]

Generates the sample set (``make-devset --preset samples``) in a temporary folder, fits the
Inspector on 4 normal references (few-shot), warms up once, then times ``inspect`` over the
test images in batches. Writes ``benchmarks/results/inspect_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
RESULTS = Path(__file__).resolve().parents[1] / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lmm", default="mini")
    parser.add_argument("--out", type=Path, default=RESULTS / "inspect_speed")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from myriad.images import list_images
    from myriad.inspection import Inspector

    with tempfile.TemporaryDirectory() as tmp:
        from click.testing import CliRunner

        from myriad.cli import cli

        result = CliRunner().invoke(cli, ["make-devset", str(Path(tmp) / "s"), "--preset", "samples", "-q"])
        if result.exit_code:
            raise SystemExit(result.output)
        category = sorted(p for p in (Path(tmp) / "s").iterdir() if p.is_dir())[0]
        normal = list_images(category / "train" / "good")[:4]
        tests = [p for d in sorted((category / "test").iterdir()) if d.is_dir() for p in list_images(d)]
        tests = (tests * ((args.images + len(tests) - 1) // len(tests)))[: args.images]
        t0 = time.perf_counter()
        inspector = Inspector(expert="patchcore", lmm=args.lmm)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        inspector.fit(normal)
        fit_s = time.perf_counter() - t0
        inspector.inspect(tests[:1])  # warm-up
        rows = []
        t0 = time.perf_counter()
        for start in range(0, len(tests), args.batch):
            rows += inspector.inspect(tests[start : start + args.batch])
        total_s = time.perf_counter() - t0
    per_image = {k: sum(r.timings_ms[k] for r in rows) / len(rows) for k in ("expert", "lmm", "total")}
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, load {os.getloadavg()[0]:.1f}",
        "torch": torch.__version__,
        "lmm": args.lmm,
        "expert": "patchcore",
        "mode": inspector.mode,
        "normal_images": len(normal),
        "images": len(rows),
        "batch": args.batch,
        "model_load_s": round(load_s, 2),
        "fit_s": round(fit_s, 2),
        "wall_ms_per_image": round(1000 * total_s / len(rows), 1),
        "ms_per_image": {k: round(v, 1) for k, v in per_image.items()},
        "answers": sorted({r.answer for r in rows}),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    md = [
        "# `myriad inspect` speed (Myriad-mini + PatchCore few-shot)",
        "",
        f"{report['machine']}; torch {report['torch']}; {report['images']} images in batches of {args.batch} after fitting on "
        f"{report['normal_images']} normal images ({report['mode']}).",
        "",
        "| model load s | fit s | expert ms/img | LMM ms/img | total ms/img | wall ms/img | target |",
        "|---|---|---|---|---|---|---|",
        f"| {load_s:.2f} | {fit_s:.2f} | {per_image['expert']:.0f} | {per_image['lmm']:.0f} | {per_image['total']:.0f} | "
        f"{report['wall_ms_per_image']:.0f} | <= 1000 |",
        "",
        "Distinct answers: " + "; ".join(f"`{a}`" for a in report["answers"]),
    ]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
