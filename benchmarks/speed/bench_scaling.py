"""How the default expert's fit and per-image time grow with the number of normals and the image size (by hand).

Normals: the realistic dev set's brick normals (256 px crops of a real photo), with their mirror images and
quarter turns where more are asked than the dev set holds (``--normals 50,100,200,500,1000``); the expert is fitted
with its calibration and held-out maps, then scores 32 test crops at batch 8. Sizes: one photo bundled with
scikit-image (``brick``) cut and resized into ``--sizes`` squares (256 px up to 2,048 px; the detector tiles large
images into 256 px tiles, ``tile="auto"``), ``--size-normals`` normals per size, 8 test images. Times on this
machine, with the CPU flags; writes ``OUT.json`` and ``OUT.md``::

    .venv/bin/python benchmarks/speed/bench_scaling.py --data DATA/realistic --out benchmarks/results/speed_scaling
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_speed import cpu_facts  # noqa: E402


def _variants(images: list[Any], count: int) -> list[Any]:
    """``count`` normals: the images, then their mirror images and quarter turns."""
    import numpy as np

    ops = [lambda a: a, np.fliplr, np.flipud, lambda a: np.rot90(a, 1), lambda a: np.rot90(a, 3)]
    out = [np.ascontiguousarray(op(img)) for op in ops for img in images]
    if count > len(out):
        raise SystemExit(f"--normals {count}: at most {len(out)} from {len(images)} dev-set normals")
    return out[:count]


def _timed_fit_and_detect(expert: str, config: dict, normals: list[Any], tests: list[Any]) -> dict:
    from myriad.fusion import make_detector

    detector = make_detector(expert, config)
    started = time.perf_counter()
    detector.fit(normals, keep_heldout=True)
    fit = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(0, len(tests), 8):
        detector.detect(tests[i : i + 8])
    per_image = 1000 * (time.perf_counter() - started) / len(tests)
    tiled = any(getattr(m, "tiling", None) is not None for m in getattr(detector, "members", [detector]))
    return {"fit_seconds": fit, "ms_per_image": per_image, "tiled": tiled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the realistic dev set")
    parser.add_argument("--category", default="brick")
    parser.add_argument("--normals", default="50,100,200,500,1000")
    parser.add_argument("--sizes", default="256,512,1024,2048")
    parser.add_argument("--size-normals", type=int, default=20)
    parser.add_argument("--expert", default="patchcore+global")
    parser.add_argument("--config", default="{}", help="the expert's config as JSON")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import numpy as np
    import skimage.data
    import torch
    from skimage.transform import resize

    from myriad.images import load_image

    torch.set_num_threads(args.threads)
    config = json.loads(args.config)
    root = args.data / args.category
    base = [load_image(p) for p in sorted((root / "train" / "good").glob("*.png"))]
    tests = [load_image(p) for p in sorted((root / "test").rglob("*.png"))[::4][:32]]
    _timed_fit_and_detect(args.expert, config, base[:12], tests[:2])  # warm up: backbones, exports, FAISS
    by_normals = []
    for count in (int(n) for n in args.normals.split(",") if n):
        row = {"normals": count, **_timed_fit_and_detect(args.expert, config, _variants(base, count), tests)}
        by_normals.append(row)
        print(json.dumps(row), flush=True)
    photo = skimage.data.brick()
    photo = np.stack([photo] * 3, axis=-1) if photo.ndim == 2 else photo[..., :3]
    rng = np.random.default_rng(0)
    by_size = []
    for size in (int(s) for s in args.sizes.split(",") if s):
        def crop(seed: int, size: int = size) -> Any:
            r = np.random.default_rng(seed)
            side = int(r.integers(photo.shape[0] * 3 // 4, photo.shape[0]))
            y, x = r.integers(0, photo.shape[0] - side + 1), r.integers(0, photo.shape[1] - side + 1)
            part = photo[y : y + side, x : x + side]
            return (resize(part, (size, size), preserve_range=True, anti_aliasing=True)).astype(np.uint8)

        normals = [crop(int(s)) for s in rng.integers(0, 2**31, args.size_normals)]
        images = [crop(int(s)) for s in rng.integers(0, 2**31, 8)]
        row = {"size": size, **_timed_fit_and_detect(args.expert, config, normals, images)}
        by_size.append(row)
        print(json.dumps(row), flush=True)
    about = (f"Expert `{args.expert}` (config {args.config}), {args.threads} threads, CPU {json.dumps(cpu_facts())}. "
             f"Normals: {args.data.name}/{args.category} crops (and their mirror images and quarter turns past "
             f"{len(base)}), 32 test crops; sizes: scikit-image's brick photo resized, {args.size_normals} normals, "
             "8 test images.")
    lines = ["# The default expert's time against the number of normals and the image size", "", about, "",
             "| normals | fit s (with calibration) | ms per image (batch 8) |", "|---:|---:|---:|"]
    lines += [f"| {r['normals']} | {r['fit_seconds']:.1f} | {r['ms_per_image']:.0f} |" for r in by_normals]
    lines += ["", "| image side px | tiled | fit s (with calibration) | ms per image (batch 8) |", "|---:|---|---:|---:|"]
    lines += [f"| {r['size']} | {'yes' if r['tiled'] else 'no'} | {r['fit_seconds']:.1f} | {r['ms_per_image']:.0f} |" for r in by_size]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"about": about, "normals": by_normals, "sizes": by_size}, indent=1))
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
