"""Time MuSc on one category: 300 test images + the host's 16 control normals, scored as one batch.

The host (:class:`myriad.detector.Detector`) appends 16 control normals to every batch of
a transductive expert and scores ``test + controls`` in one ``predict`` call; that call is
what is timed here, once per setting, each in a fresh child process (so peak memory is
per setting and nothing is cached between settings):

- ``before``: the exact all-pairs scoring of the paper (``references=None``);
- ``after``: the plugin's defaults (a bounded random subset of reference images).

The category is generated with Myriad's dev-set generator (``--texture``, ``--size`` px,
about 1 in 7 test images defective) unless ``--data`` names an MVTec-layout category
folder. Reported per setting: wall seconds of the ``predict`` call (``time.perf_counter``)
and its CPU seconds (``time.process_time``), feature extraction vs. mutual scoring, peak
RSS of the child, image AUROC and the accuracy at the in-batch threshold (maximum control
score). The target is under 300 s wall on 2 threads. Run it on a quiet machine: on a
shared one wall time is pessimistic.

Example (the numbers cited in myriad_experts_musc/README.md)::

    .venv/bin/python benchmarks/musc/bench_category.py --images 300 --threads 2

Smoke run: ``--images 20 --output-dir /tmp/musc_bench``. Writes
``<output-dir>/musc_category.json`` and ``.md`` atomically when every setting has finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Settings compared: name -> MuSc config overrides.
SETTINGS: dict[str, dict[str, Any]] = {"before": {"references": None}, "after": {}}
TARGET_SECONDS = 300.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="test images of the category")
    parser.add_argument("--controls", type=int, default=16, help="control normals the host appends")
    parser.add_argument("--threads", type=int, default=2, help="torch / BLAS threads")
    parser.add_argument("--size", type=int, default=256, help="side of the generated images (px)")
    parser.add_argument("--texture", default="brick", help="texture of the generated category")
    parser.add_argument("--data", type=Path, default=None, help="an MVTec-layout category folder instead of generating one")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--config", default="{}", help="MuSc settings (JSON) applied to every setting")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one setting
    args = parser.parse_args(argv)
    if args.images < 1 or args.controls < 0 or args.threads < 1:
        parser.error("--images and --threads must be >= 1, --controls >= 0")
    unknown = [s for s in args.settings.split(",") if s not in SETTINGS]
    if unknown:
        parser.error(f"--settings: unknown {unknown}; known: {', '.join(SETTINGS)}")
    return args


def generate_category(root: Path, images: int, controls: int, size: int, texture: str) -> Path:
    """A dev-set category with ``images`` test images (about 1 in 7 defective) and ``controls`` normals."""
    from myriad.synthetic import DevsetSpec, make_devset
    from myriad.synthetic.defects import EVAL_DEFECTS

    kinds = len(EVAL_DEFECTS)
    per_kind = max(1, images // (7 * kinds)) if images >= 2 * kinds else 0
    spec = DevsetSpec(
        categories=(texture,),
        train=max(1, controls),
        test_good=images - per_kind * kinds if per_kind else max(1, images - 1),
        test_defect=per_kind if per_kind else 1,
        defects=EVAL_DEFECTS if per_kind else EVAL_DEFECTS[:1],
        size=size,
    )
    make_devset(root, spec)
    return root / texture


def run_setting(folder: Path, images: int, controls: int, config: dict[str, Any]) -> dict[str, Any]:
    """In this process: load the category, time one ``predict`` of ``test + controls``; metrics and peak RSS."""
    import resource

    import numpy as np

    from myriad import load_image
    from myriad.datasets import read_mvtec
    from myriad.metrics import image_auroc
    from myriad.plugins import get_expert

    (category,) = read_mvtec(folder.parent, [folder.name])
    tests = category.test[:images]
    batch = [load_image(s.path) for s in tests] + [load_image(s.path) for s in category.train[:controls]]
    labels = np.array([s.label for s in tests])
    expert = get_expert("musc", {"progress": False, **config})
    expert.predict(batch[:2])  # warm-up: weights loaded, kernels initialised before timing
    wall, cpu = time.perf_counter(), time.process_time()
    grids, embeddings = expert.extract(batch)
    wall_x, cpu_x = time.perf_counter() - wall, time.process_time() - cpu
    del grids, embeddings
    wall, cpu = time.perf_counter(), time.process_time()
    scores = np.array([p.score for p in expert.predict(batch)])
    wall_s, cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    test, ctrl = scores[: len(tests)], scores[len(tests) :]
    row: dict[str, Any] = {
        "config": json.loads(expert.config.model_dump_json()),
        "batch": len(batch),
        "test_images": len(tests),
        "anomalous": int(labels.sum()),
        "predict_wall_s": round(wall_s, 1),
        "predict_cpu_s": round(cpu_s, 1),
        "extract_wall_s": round(wall_x, 1),
        "extract_cpu_s": round(cpu_x, 1),
        "scoring_wall_s": round(max(wall_s - wall_x, 0.0), 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "under_target": wall_s < TARGET_SECONDS,
    }
    if 0 < labels.sum() < len(labels):
        row["image_auroc"] = round(float(image_auroc(labels, test)), 4)
    if len(ctrl):
        row["accuracy_at_control_max"] = round(float(np.mean((test > ctrl.max()) == labels.astype(bool))), 4)
    return row


def to_markdown(result: dict[str, Any]) -> str:
    """The report: one row per setting."""
    lines = [
        "# MuSc: one category of test images + the host's control normals, one batch",
        "",
        f"{result['test_images']} test images + {result['controls']} controls ({result['source']}), "
        f"{result['threads']} threads, torch {result['torch']}, {result['machine']}, load average at the end "
        f"{result['load_average']}. Wall seconds of one `predict` call (features + mutual scoring + RsCIN); "
        f"target < {TARGET_SECONDS:.0f} s. Feature extraction is timed in a separate call before it.",
        "",
        "| setting | references | predict wall s | predict CPU s | features wall s | scoring wall s | peak RSS GiB "
        "| image AUROC | accuracy (max control) | < 300 s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in result["settings"].items():
        refs = row["config"]["references"]
        lines.append(
            f"| {name} | {'all pairs' if refs is None else refs} | {row['predict_wall_s']} | {row['predict_cpu_s']} | "
            f"{row['extract_wall_s']} | {row['scoring_wall_s']} | {row['peak_rss_gib']} | "
            f"{row.get('image_auroc', '-')} | {row.get('accuracy_at_control_max', '-')} | "
            f"{'yes' if row['under_target'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Generate (or read) the category, run each setting in a child process, write JSON + Markdown."""
    args = parse_args(argv)
    if args.child is not None:  # internal: one setting, result as the last stdout line
        import torch

        torch.set_num_threads(args.threads)
        config = {**json.loads(args.config), **SETTINGS[args.child]}
        print(json.dumps(run_setting(args.data, args.images, args.controls, config)))
        return

    import torch

    from myriad.io import atomic_write_text

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory(prefix="musc_bench_") as tmp:
        folder = args.data or generate_category(Path(tmp) / "data", args.images, args.controls, args.size, args.texture)
        result: dict[str, Any] = {
            "source": str(args.data) if args.data else f"generated: {args.texture}, {args.size} px",
            "test_images": args.images,
            "controls": args.controls,
            "threads": args.threads,
            "torch": torch.__version__,
            "machine": f"{os.cpu_count()} cores ({platform.machine()})",
            "settings": {},
        }
        for name in args.settings.split(","):
            command = [sys.executable, __file__, "--child", name, "--data", str(folder), "--images", str(args.images),
                       "--controls", str(args.controls), "--threads", str(args.threads), "--config", args.config]
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise SystemExit(f"bench_category: setting {name!r} failed:\n{done.stderr[-2000:]}")
            result["settings"][name] = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_average"] = [round(x, 1) for x in os.getloadavg()]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output_dir / "musc_category.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.output_dir / "musc_category.md", to_markdown(result))
    sys.stdout.write(to_markdown(result))


if __name__ == "__main__":
    main()
