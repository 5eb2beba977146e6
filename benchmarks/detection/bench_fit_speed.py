"""Fit time and scoring speed of the default expert: the previous release's settings against the new (by hand).

Each setting runs in a fresh process (cold model and feature caches, so neither profits from the
other's work): fit ``patchcore+global`` on ``--normals`` training images of one category, then
score ``--images`` test images in batches of 8. Run it on a quiet machine::

    .venv/bin/python benchmarks/detection/bench_fit_speed.py --data data/visible --category brick \\
        --out benchmarks/results/decisions_speed
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

#: name -> (calibration, fusion rule, member settings)
SETTINGS = {
    "old (kfold, max)": ("kfold", "max", {"patchcore": {"position_baseline": "none"}}),
    "previous (auto, tail)": ("auto", "tail", {"patchcore": {"position_baseline": "none"}}),
    "new (default)": ("auto", "tail", {}),
}


def one(data: str, category: str, normals: int, images: int, calibration: str, rule: str, settings: str) -> dict:
    from myriad.datasets import read_mvtec
    from myriad.fusion import make_detector
    from myriad.images import load_image

    cat = read_mvtec(data, [category])[0]
    train = [load_image(s.path) for s in cat.train[:normals]]
    tests = [load_image(s.path) for s in cat.test[:images]]
    started = time.perf_counter()
    config = {"patchcore": {"mode": "one_class"}, "global": {"mode": "one_class"}}
    for name, extra in json.loads(settings).items():
        config[name].update(extra)
    detector = make_detector("patchcore+global", config, rule=rule).fit(train, calibration=calibration)
    fit = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, len(tests), 8):
        detector.detect(tests[start : start + 8])
    return {"fit_s": round(fit, 1), "ms_per_image": round(1000 * (time.perf_counter() - started) / len(tests), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--category", default="brick")
    parser.add_argument("--normals", type=int, default=200)
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", nargs=3, metavar=("CALIBRATION", "RULE", "SETTINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.data, args.category, args.normals, args.images, *args.one)))
        return
    results = {}
    for name, (calibration, rule, settings) in SETTINGS.items():
        cmd = [sys.executable, __file__, "--data", args.data, "--category", args.category, "--normals", str(args.normals),
               "--images", str(args.images), "--one", calibration, rule, json.dumps(settings)]
        results[name] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    lines = [f"# Fit and scoring speed: patchcore+global, {args.normals} normals of {args.category} ({args.data})", "",
             "| setting | fit s | ms / image |", "|---|---:|---:|"]
    lines += [f"| {name} | {r['fit_s']} | {r['ms_per_image']} |" for name, r in results.items()]
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps(results, indent=1))
        Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
