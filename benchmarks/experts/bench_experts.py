"""CPU speed of the MuSc, AnomalyGPT and AprilGAN experts (run by hand, not a test).

ms/image of ``predict`` (after a warm-up call, weights already loaded) at each expert's
default resolution and at a reduced one, on this machine's CPU with ``--threads`` torch
threads:

- runnable here for real: the embedded EfficientNet-Lite0 configurations (MuSc's default,
  the few-shot branches of AnomalyGPT and AprilGAN);
- ``--full``: the papers' architectures at full size with RANDOM weights (no download; the
  cost does not depend on the values): MuSc and AprilGAN on open_clip ViT-L-14-336
  (518 px and 336 px), AnomalyGPT on the ImageBind-Huge vision tower (224 px, its only
  size) with AnomalyGPT's decoder. Prompt features are random here: encoding the prompts
  (420 sentences for AprilGAN, 24 for AnomalyGPT) happens once per class and is not timed.

Also measured: peak RSS of MuSc's chunked mutual scoring for 200 images of 37 x 37 tokens
(one layer and one r, in a subprocess; 8 channels so that it finishes on a CPU; the
C-dependent feature tensor is added analytically for 1024 channels), and the analytic
bound of the whole N^2 step.

Images are random 160 px crops of scikit-image's brick texture (a few with synthetic
defects). Writes ``benchmarks/results/experts_speed.json`` and ``.md``::

    .venv/bin/python benchmarks/experts/bench_experts.py            # embedded backbones (minutes)
    .venv/bin/python benchmarks/experts/bench_experts.py --full     # + ViT-L / ImageBind-H (slow on a CPU)
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"


def bricks(n: int, size: int = 160, seed: int = 0) -> list:
    """``n`` RGB crops of skimage's brick texture; every fourth one carries a bright square."""
    import numpy as np
    import skimage.data

    rng = np.random.default_rng(seed)
    tex = skimage.data.brick()
    out = []
    for i in range(n):
        y, x = rng.integers(0, tex.shape[0] - size, 2)
        crop = tex[y : y + size, x : x + size].astype(np.float32)
        if i % 4 == 3:
            cy, cx = rng.integers(10, size - 30, 2)
            crop[cy : cy + 20, cx : cx + 20] += 80
        out.append(np.repeat(np.clip(crop, 0, 255).astype(np.uint8)[..., None], 3, axis=2))
    return out


def timed(expert, images: list, repeats: int = 1, warmup: bool = True) -> float:
    """ms/image of ``expert.predict(images)`` (best of ``repeats``, after one warm-up call on 2 images)."""
    if warmup:
        expert.predict(images[: max(expert.min_batch, 2)])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        expert.predict(images)
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best / len(images)


def embedded_rows(n_musc: int, n_query: int) -> list[dict]:
    from myriad.plugins import get_expert

    rows = []
    images = bricks(max(n_musc, n_query) + 2)
    for size in (320, 192):
        e = get_expert("musc", {"image_size": size, "progress": False})
        rows.append(row("musc", "zero_shot", "efficientnet_lite0 (2, 3)", size, len(images[:n_musc]), timed(e, images[:n_musc]),
                        f"batch of {n_musc} scored jointly; 2 layers x 3 r"))
    for size in (224, 128):
        e = get_expert("anomalygpt", {"backbone": "efficientnet_lite0", "image_size": size}).fit(images[-1:])
        rows.append(row("anomalygpt", "few_shot (k=1)", "efficientnet_lite0 (2, 3)", size, n_query, timed(e, images[:n_query]), ""))
    for size in (224, 128):
        cfg = {"mode": "few_shot", "zero_shot_branch": False, "few_shot_backbone": "efficientnet_lite0", "image_size": size}
        e = get_expert("aprilgan", cfg).fit(images[-1:])
        rows.append(row("aprilgan", "few_shot (k=1), memory branch", "efficientnet_lite0 (2, 3)", size, n_query,
                        timed(e, images[:n_query]), ""))
    return rows


def full_rows(n: int) -> list[dict]:
    """The papers' towers at full size with random weights, injected into the experts."""
    import open_clip
    import torch

    from myriad.plugins import get_expert

    images = bricks(n)
    rows = []
    cfg = open_clip.get_model_config("ViT-L-14-336")
    clip = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=True).eval()
    native_pos = clip.visual.positional_embedding.data.clone()
    for size in (518, 336):
        from myriad_experts_aprilgan.clip import build_adapters, resize_positional_embedding

        clip.visual.positional_embedding = torch.nn.Parameter(resize_positional_embedding(native_pos, size // 14))
        e = get_expert("aprilgan", {"image_size": size, "class_name": "bottle"})
        e._clip = clip
        e._adapters = build_adapters(1024, 768, 4).eval()
        e._text["bottle"] = torch.nn.functional.normalize(torch.randn(768, 2), dim=0)
        rows.append(row("aprilgan", "zero_shot", "ViT-L-14-336 (random weights)", size, n, timed(e, images, warmup=False), "4 adapters + prompts"))

        from myriad_experts_musc.backbones import OpenClipTokens

        m = get_expert("musc", {"backbone": "open_clip:ViT-L-14-336", "image_size": size, "progress": False})
        m._backbone = OpenClipTokens("ViT-L-14-336", None, None, size, True, None, "cpu", visual=clip.visual)
        rows.append(row("musc", "zero_shot", "ViT-L-14-336 (random weights)", size, n, timed(m, images, warmup=False),
                        f"batch of {n}; 4 layers x 3 r"))
    del clip

    from myriad_experts_anomalygpt.expert import ImageDecoder
    from myriad_experts_anomalygpt.imagebind import build_vision_tower
    from myriad_experts_anomalygpt.plugin import ImageBindArchitecture

    arch = ImageBindArchitecture()
    vision = build_vision_tower(arch).eval().requires_grad_(False)
    e = get_expert("anomalygpt", {"mode": "one_class", "class_name": "bottle"})
    e._vision, e._decoder = vision, ImageDecoder.build(1280, 1024, 4).eval()
    e._text = torch.nn.functional.normalize(torch.randn(2, 1024), dim=-1)
    e.fitted = True
    rows.append(row("anomalygpt", "one_class", "ImageBind-Huge vision (random weights)", 224, n, timed(e, images, warmup=False), "decoder + prompts"))
    f = get_expert("anomalygpt", {"mode": "few_shot"})
    f._vision = vision
    f.fit(images[:1])
    rows.append(row("anomalygpt", "few_shot (k=1)", "ImageBind-Huge vision (random weights)", 224, n, timed(f, images, warmup=False), ""))
    return rows


def row(expert: str, mode: str, backbone: str, size: int, n: int, ms: float, note: str) -> dict:
    print(f"{expert:10s} {mode:32s} {backbone:40s} {size:4d}px  {ms:9.1f} ms/image  {note}", flush=True)
    return {"expert": expert, "mode": mode, "backbone": backbone, "image_size": size, "images": n,
            "ms_per_image": round(ms, 1), "note": note}


_MSM_CHILD = """
import resource, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from myriad_experts_musc.scoring import mutual_scores
n, l, c = 200, 1369, 8
z = torch.nn.functional.normalize(torch.randn(n, l, c), dim=-1)
start = time.perf_counter()
mutual_scores(z, 0.3, 512 * 2**20)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def musc_memory(threads: int) -> dict:
    from myriad_experts_musc.scoring import mutual_scoring_bytes

    out = subprocess.run([sys.executable, "-c", _MSM_CHILD, str(threads)], capture_output=True, text=True, check=True)
    seconds, peak = out.stdout.split()
    features_1024 = 200 * 1369 * 1024 * 4
    features_8 = 200 * 1369 * 8 * 4
    result = {
        "images": 200,
        "tokens": 1369,
        "measured_channels": 8,
        "measured_seconds": round(float(seconds), 1),
        "measured_peak_rss_gib": round(int(peak) / 2**30, 2),
        "peak_rss_gib_at_1024_channels": round((int(peak) + features_1024 - features_8) / 2**30, 2),
        "analytic_step_bytes_gib": round(mutual_scoring_bytes(200, 1369, 1024, 512 * 2**20) / 2**30, 2),
        "raw_tokens_fp16_4_layers_gib": round(200 * 4 * 1369 * 1024 * 2 / 2**30, 2),
        "vit_l_weights_fp32_gib": 1.13,
    }
    result["whole_expert_estimate_gib"] = round(
        result["peak_rss_gib_at_1024_channels"] + result["raw_tokens_fp16_4_layers_gib"] + result["vit_l_weights_fp32_gib"], 2
    )
    print("MuSc mutual scoring, 200 x 1369 tokens:", result, flush=True)
    return result


def write(rows: list[dict], memory: dict | None, args: argparse.Namespace) -> None:
    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    import os

    meta = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": args.threads,
            "load_average_at_end": [round(x, 1) for x in os.getloadavg()], "cpu_count": os.cpu_count(),
            "note": "shared machine: timings vary with other jobs' load"}
    (RESULTS / "experts_speed.json").write_text(json.dumps({"meta": meta, "rows": rows, "musc_memory": memory}, indent=2))
    lines = [
        "# Vision experts: CPU speed (ms/image)",
        "",
        f"torch {meta['torch']}, {args.threads} threads, {meta['cpu_count']} cores ({meta['cpu']}), load average at the end "
        f"{meta['load_average_at_end']}; {meta['note']}. Weights loaded before timing; "
        "`predict` after a warm-up call (embedded-CNN rows; the full-size rows are timed on their first call). Rows "
        "marked *random weights* run the papers' architectures at full size without their weights (cost only; prompt "
        "encoding, done once per class, is not timed).",
        "",
        "| expert | mode | backbone | px | images | ms/image | note |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['expert']} | {r['mode']} | {r['backbone']} | {r['image_size']} | {r['images']} | "
                     f"{r['ms_per_image']:.1f} | {r['note']} |")
    if memory:
        lines += [
            "",
            "## MuSc mutual scoring memory (200 images, 37 x 37 tokens, 512 MB blocks)",
            "",
            f"- measured peak RSS of the step with 8 channels: {memory['measured_peak_rss_gib']} GiB "
            f"({memory['measured_seconds']} s)",
            f"- the same with the 1024-channel feature tensor added: {memory['peak_rss_gib_at_1024_channels']} GiB "
            f"(analytic bound of the step: {memory['analytic_step_bytes_gib']} GiB)",
            f"- whole expert estimate (+ raw fp16 tokens of 4 layers {memory['raw_tokens_fp16_4_layers_gib']} GiB + "
            f"ViT-L weights {memory['vit_l_weights_fp32_gib']} GiB): {memory['whole_expert_estimate_gib']} GiB (< 8 GB)",
        ]
    (RESULTS / "experts_speed.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'experts_speed.json'} and .md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="also time ViT-L-14-336 and ImageBind-Huge (random weights)")
    parser.add_argument("--musc-images", type=int, default=16)
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--full-images", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = embedded_rows(args.musc_images, args.queries)
    if args.full:
        rows += full_rows(args.full_images)
    previous = RESULTS / "experts_speed.json"
    if args.skip_memory:  # keep the last measurement of the (slow) memory run
        memory = json.loads(previous.read_text()).get("musc_memory") if previous.is_file() else None
    else:
        memory = musc_memory(args.threads)
    write(rows, memory, args)


if __name__ == "__main__":
    main()
