"""Inspection at scale on this machine: time to the first answer with and without a profile, images per second in
one process and on Ray with 1 and 2 actors per stage, Ray's overhead per image, memory per actor, ``myriad --help``.

    .venv/bin/python benchmarks/scale/bench_scale.py --normal DATA/brick/train/good --images DATA/brick/test \\
        [--count 48] [--lmm mini] [--out benchmarks/results/scale]

Run it on a quiet machine (it records the load average). Every timing is wall-clock:

- **first answer**: a fresh ``myriad inspect ONE_IMAGE --normal NORMAL`` (fit and calibrate, then answer) against
  ``myriad inspect ONE_IMAGE --profile PROFILE`` (the profile ``myriad fit`` wrote), each a new process;
- **throughput**: the same ``--count`` images inspected from the profile in one process (``myriad inspect``'s
  loop, after loading) and with ``--engine ray`` on a local cluster of this machine's CPUs, 1 and 2 actors per
  stage (expert actors, then Myriad actors holding the LMM; after the cluster and the actors started: their
  start-up is reported apart); Ray's overhead per image is the Ray run's seconds per image minus the single
  process's, with one actor per stage;
- **memory per actor**: the largest resident set of an expert actor's and of a Myriad actor's process during the
  Ray runs;
- ``myriad --help``: the median of 5 runs (the CLI must stay instant: plugins and models load lazily).

Images per day per node and for N nodes follow as a calculation from the measured rates (stated in the report,
with what would limit them). Writes ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
MYRIAD = [sys.executable, "-m", "myriad"]


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def _images(folder: Path, count: int) -> list[Path]:
    from myriad.images import is_image_file

    found = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    step = max(1, len(found) // count)
    return found[::step][:count]  # spread over the folder's sub-folders (good and defect kinds)


class _ActorMemory:
    """Samples the resident memory of the expert and Myriad actors' processes while a Ray run goes."""

    KINDS = {"_ExpertActor": "expert", "_MyriadActor": "myriad"}

    def __init__(self) -> None:
        self.peak_mib = {"expert": 0.0, "myriad": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for process in psutil.process_iter(["cmdline", "memory_info"]):
                line = " ".join(process.info["cmdline"] or [])
                for marker, kind in self.KINDS.items():
                    if marker in line and process.info["memory_info"]:
                        self.peak_mib[kind] = max(self.peak_mib[kind], process.info["memory_info"].rss / 2**20)
            time.sleep(0.2)

    def __enter__(self) -> "_ActorMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--normal", type=Path, required=True, help="folder of normal images (the profile's)")
    parser.add_argument("--images", type=Path, required=True, help="folder of images to inspect")
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--lmm", default="mini")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale")
    args = parser.parse_args()

    from myriad.engines.ray_engine import RaySettings, run_ray
    from myriad.inspection import Inspector
    from myriad.profiles import load_profile

    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    images = _images(args.images, args.count)
    one = images[0]
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_average_start": load_start,
                    "images": len(images), "lmm": args.lmm, "batch": args.batch, "normal": str(args.normal)}
    try:
        help_times = [_timed([*MYRIAD, "--help"]) for _ in range(5)]
        result["help_s"] = statistics.median(help_times)
        profile = work / "profile"
        result["fit_s"] = _timed([*MYRIAD, "fit", str(args.normal), "--lmm", args.lmm, "-o", str(profile)])
        result["first_answer_fit_s"] = _timed([*MYRIAD, "inspect", str(one), "--normal", str(args.normal), "--lmm",
                                               args.lmm, "-o", str(work / "first-fit")])
        result["first_answer_profile_s"] = _timed([*MYRIAD, "inspect", str(one), "--profile", str(profile), "--lmm",
                                                   args.lmm, "-o", str(work / "first-profile")])

        # one process: the loop of `myriad inspect` (batch by batch, overlays written), after loading
        from myriad.batch_run import inspect_paths

        loaded = load_profile(profile)
        inspector = Inspector(loaded.expert, lmm=args.lmm).use_profile(loaded)
        folder = work / "single"
        folder.mkdir()
        inspect_paths(inspector, images[:2], ["warm_a.png", "warm_b.png"], None, folder)  # warm-up
        started = time.perf_counter()
        for start in range(0, len(images), args.batch):
            batch = images[start : start + args.batch]
            inspect_paths(inspector, batch, [f"{i}.png" for i in range(start, start + len(batch))], None, folder)
        single_s = time.perf_counter() - started
        result["single"] = {"seconds": single_s, "images_per_s": len(images) / single_s}
        del inspector

        settings = {"lmm": args.lmm, "device": "cpu", "precision": "auto", "answers": "facts", "verdict": "either",
                    "ask": None, "rules": None}
        result["ray"] = {}
        for workers in (1, 2):
            out = work / f"ray{workers}"
            out.mkdir()
            first: list[float] = []
            started = time.perf_counter()

            def on_rows(rows: list[dict], first: list[float] = first) -> None:
                if not first:
                    first.append(time.perf_counter())

            with _ActorMemory() as memory:
                ran = run_ray([(p, f"{i}.png") for i, p in enumerate(images)], profile, settings, out,
                              out / "results.blocks", on_rows, RaySettings(workers=workers, batch_size=args.batch))
            total = time.perf_counter() - started
            # throughput after the first batch arrived (cluster, actors and the first batch are start-up)
            steady = (time.perf_counter() - first[0]) if first else total
            result["ray"][str(workers)] = {
                "seconds_total": total, "seconds_after_first_batch": steady,
                "images_per_s_total": len(images) / total,
                "images_per_s_after_first_batch": (len(images) - args.batch) / steady if steady > 0 else None,
                "peak_rss_mib": memory.peak_mib, "cpus_per_actor": ran["cpus_per_actor"], "cluster_cpus": ran["cpus"],
                "experts": ran["experts"], "myriad": ran["myriad"],
                "blocks": len(list((out / "results.blocks").glob("block-*.jsonl"))),
            }
        r1 = result["ray"]["1"]
        result["ray_overhead_s_per_image"] = r1["seconds_total"] / len(images) - single_s / len(images)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1))
    Path(f"{args.out}.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    """The report, with images per day worked out from the measured rates."""
    single = r["single"]["images_per_s"]
    per_day = single * 86400
    r1, r2 = r["ray"]["1"], r["ray"]["2"]
    expert_mib = max(r1["peak_rss_mib"]["expert"], r2["peak_rss_mib"]["expert"])
    myriad_mib = max(r1["peak_rss_mib"]["myriad"], r2["peak_rss_mib"]["myriad"])
    best = max(r1["images_per_s_after_first_batch"] or 0, r2["images_per_s_after_first_batch"] or 0)
    lines = [
        "# Inspection at scale", "",
        f"{r['images']} images, LMM {r['lmm']}, batch {r['batch']}; machine {r['machine']}; load average "
        f"{r['load_average_start'][0]:.1f} at the start, {r['load_average_end'][0]:.1f} at the end. "
        "`benchmarks/scale/bench_scale.py`. On Ray the pipeline is read, expert actors (the profile), Myriad actors "
        "(the LMM), one file written per block.", "",
        "| measure | value |", "|---|---:|",
        f"| `myriad --help` (median of 5) | {r['help_s']:.2f} s |",
        f"| `myriad fit` on the normals (profile written) | {r['fit_s']:.1f} s |",
        f"| first answer, fitting on the normals (`--normal`) | {r['first_answer_fit_s']:.1f} s |",
        f"| first answer from the profile (`--profile`) | {r['first_answer_profile_s']:.1f} s |",
        f"| one process, after loading | {single:.2f} images/s ({1000 / single:.0f} ms per image) |",
        f"| Ray, 1 actor per stage: whole run (cluster and actor start included) | {r1['images_per_s_total']:.2f} images/s |",
        f"| Ray, 1 actor per stage: after the first batch | {r1['images_per_s_after_first_batch'] or 0:.2f} images/s |",
        f"| Ray, 2 actors per stage: whole run | {r2['images_per_s_total']:.2f} images/s |",
        f"| Ray, 2 actors per stage: after the first batch | {r2['images_per_s_after_first_batch'] or 0:.2f} images/s |",
        f"| Ray's overhead per image (1 actor per stage, whole run, minus one process) | {1000 * r['ray_overhead_s_per_image']:.0f} ms |",
        f"| memory per expert actor / per Myriad actor (largest RSS) | {expert_mib:.0f} / {myriad_mib:.0f} MiB |",
        "",
        f"**Images per day, worked out.** One process here: {single:.2f} images/s x 86,400 s = {per_day:,.0f} images a "
        f"day per node of this kind ({r['machine']}). On Ray, after start-up, the better of the two pools made "
        f"{best:.2f} images/s x 86,400 = {best * 86400:,.0f} a day on this node. N such nodes: N times that (the actors "
        "of both stages spread over every node's CPUs), less the start-up (cluster, actors loading the profile and "
        f"the LMM), which this run's length measures as {1000 * r['ray_overhead_s_per_image']:.0f} ms per image and "
        "which a long run spreads thin. What limits it: the expert and the LMM, CPU-bound here, so actors beyond a "
        "node's cores add nothing (with GPUs, one Myriad actor per GPU takes the LMM off the CPUs); memory, "
        f"{expert_mib:,.0f} MiB per expert actor and {myriad_mib:,.0f} MiB per Myriad actor (it loads the profile too, "
        "for the verdict's calibration and the rules), caps actors per node before cores do on small machines; then "
        "reading images from the shared path, and writing: each block's rows go to their own file (a few hundred "
        "bytes per image), merged once at the end.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
