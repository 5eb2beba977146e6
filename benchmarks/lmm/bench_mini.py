"""Speed and memory of the ``mini`` Myriad on this CPU (not a test).

Measures, with an anomaly map given, the shipped Myriad-mini weights (``--weights mini``,
the default) or untrained modules (``--weights none``; their text may be junk and
``classify`` then decodes all 8 tokens), at ``--precision`` ``auto`` (the default: bfloat16
LLM on CPUs with AVX512-BF16/AMX, else float32), ``float32``, ``bfloat16`` or ``int8``:

* cached SmolLM2 load and full ``MyriadLMM.mini()`` build;
* yes/no for one image: ``classify`` (decoding stops once the parse rule is decided)
  and the full reference answer (greedy, up to the ``###`` stop, forced to 12 tokens);
* a 40-token description (EOS/stop suppressed so exactly 40 tokens are decoded);
* the parts: backbone, VPG, TPG, Q-Former, LLM prefill, one decode step;
* batched throughput of ``classify`` and 12-token answers;
* peak RSS.

Targets (2 CPU cores): yes/no <= 0.5 s, 40 tokens <= 3 s, peak RSS <= 2.5 GB.
Writes ``benchmarks/results/lmm_bench_mini.json`` and ``.md``.

    .venv/bin/python benchmarks/lmm/bench_mini.py [--threads 2] [--repeats 5] [--precision float32] [--weights none]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"

# Idle OpenMP workers sleep instead of spinning. On a shared (oversubscribed) 2-core machine
# spinning makes 2 threads 4-10x slower than 1; must be set before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _timed(fn, repeats: int) -> dict[str, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "runs": repeats}


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def _blob_map(size: int = 224, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy, cx = torch.randint(40, size - 40, (2,), generator=g).tolist()
    blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 15.0**2))
    return (0.05 * torch.rand(size, size, generator=g) + blob)[None, None].float()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(threads: int, repeats: int, precision: str = "auto", weights: str = "mini") -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from myriad.inspection import native_bfloat16, resolve_precision
    from myriad.lmm.model import MyriadLMM
    from myriad.lmm.smollm2 import ensure_cached, load_smollm2

    asked = precision
    precision = resolve_precision(precision)

    result: dict = {
        "machine": {
            "cpu": _cpu_name(),
            "native_bfloat16": native_bfloat16("cpu"),
            "cores_visible": os.cpu_count(),
            "torch_threads": threads,
            "torch": torch.__version__,
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "load_average_at_start": os.getloadavg(),
        },
        "precision": precision,
        "precision_asked": asked,
        "weights": weights,
    }
    start = time.perf_counter()
    ensure_cached()
    result["ensure_cache_s"] = round(time.perf_counter() - start, 3)
    loads = []
    for _ in range(3):
        start = time.perf_counter()
        load_smollm2()
        loads.append(time.perf_counter() - start)
    result["cached_smollm2_load_s"] = {"median_s": round(statistics.median(loads), 3), "min_s": round(min(loads), 3)}
    start = time.perf_counter()
    torch.manual_seed(0)
    if weights == "none":
        from myriad.lmm.config import mini_config

        dtype = "bfloat16" if precision == "bfloat16" else "float32"
        model = MyriadLMM.mini(mini_config().model_copy(update={"llm_dtype": dtype}))
        if precision == "int8":
            model.quantize_language_model("int8")
    else:
        from myriad.inspection import load_lmm

        model = load_lmm(weights, precision=precision)
    result["mini_build_s"] = round(time.perf_counter() - start, 3)

    from skimage import data

    image = np.stack([data.brick()[:256, :320]] * 3, axis=-1)  # a real texture photo
    pixels = model.preprocess([image])
    amap = _blob_map()
    ve = model.vision_encoder

    with torch.inference_mode():
        result["preprocess_s"] = _timed(lambda: model.preprocess([image]), repeats)
        result["parts"] = {
            "backbone_s": _timed(lambda: ve.backbone(pixels), repeats),
            "vpg_s": _timed(lambda: ve.vpg(amap), repeats),
            "tpg_s": _timed(lambda: model.tpg(amap), repeats),
            "encode_image_s": _timed(lambda: model.encode_image(pixels, amap), repeats),
        }
        tokens = ve.encode_tokens(pixels)
        queries = torch.cat([ve.query_tokens, ve.vpg(amap)], dim=1)
        result["parts"]["qformer_s"] = _timed(lambda: ve.qformer(query_embeds=queries, encoder_hidden_states=tokens), repeats)
        probe = model.generate(pixels, amap, max_new_tokens=1, min_new_tokens=1, return_result=True)
        prompt_len = probe.prompt_lengths[0]
        result["prompt_tokens"] = prompt_len
        result["image_tokens"] = model.config.image_tokens
        embeds = torch.randn(1, prompt_len, model.config.llm.hidden_size).to(model.language_model.dtype)
        lm = model.language_model
        result["parts"]["llm_prefill_s"] = _timed(lambda: lm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1), repeats)
        gen1 = _timed(lambda: model.generate(pixels, amap, max_new_tokens=1, min_new_tokens=1), repeats)
        gen11 = _timed(lambda: model.generate(pixels, amap, max_new_tokens=11, min_new_tokens=11), max(2, repeats // 2))
        result["parts"]["decode_per_token_s"] = round((gen11["median_s"] - gen1["median_s"]) / 10, 4)

        labels = model.classify(pixels, amap)
        result["yes_no_classify_s"] = _timed(lambda: model.classify(pixels, amap), repeats)
        result["yes_no_classify_label"] = labels[0]
        full = model.generate(pixels, amap, max_new_tokens=12, min_new_tokens=12, return_result=True)
        result["yes_no_full_answer_12_tokens_s"] = _timed(
            lambda: model.generate(pixels, amap, max_new_tokens=12, min_new_tokens=12), max(2, repeats // 2)
        )
        result["answer_sample"] = full.texts[0][:80]
        result["description_sample"] = model.generate(pixels, amap, "Describe the defect in detail.", max_new_tokens=40)[0][:200]
        result["describe_40_tokens_s"] = _timed(
            lambda: model.generate(pixels, amap, "Describe the defect in detail.", max_new_tokens=40, min_new_tokens=40),
            max(2, repeats // 2),
        )
        throughput = {}
        for batch in (1, 4, 8):
            px = pixels.expand(batch, -1, -1, -1).contiguous()
            maps = torch.cat([_blob_map(seed=i) for i in range(batch)])
            cls = _timed(lambda: model.classify(px, maps), 2)
            ans = _timed(lambda: model.generate(px, maps, max_new_tokens=12, min_new_tokens=12), 2)
            throughput[str(batch)] = {
                "classify_s": cls["median_s"],
                "classify_images_per_s": round(batch / cls["median_s"], 3),
                "answer12_s": ans["median_s"],
                "answer12_images_per_s": round(batch / ans["median_s"], 3),
            }
        result["batched_throughput"] = throughput
    result["peak_rss_gb"] = round(_peak_rss_gb(), 3)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    result["targets"] = {
        "yes_no_s": 0.5,
        "describe_40_tokens_s": 3.0,
        "peak_rss_gb": 2.5,
        "met": {
            "yes_no_classify": result["yes_no_classify_s"]["median_s"] <= 0.5,
            "describe_40_tokens": result["describe_40_tokens_s"]["median_s"] <= 3.0,
            "peak_rss": result["peak_rss_gb"] <= 2.5,
        },
    }
    return result


def to_markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# mini Myriad on CPU",
        "",
        f"Weights: `{r.get('weights', 'none')}`, LLM precision: `{r.get('precision', 'float32')}`"
        f" (asked: `{r.get('precision_asked', r.get('precision', 'float32'))}`).",
        "",
        f"{m['cpu']} (native bfloat16: {m.get('native_bfloat16', '?')}), {m['cores_visible']} cores visible, torch {m['torch']} with {m['torch_threads']} thread(s), "
        f"OMP_WAIT_POLICY={m.get('OMP_WAIT_POLICY')}; "
        f"load average at start {tuple(round(x, 2) for x in m['load_average_at_start'])}, "
        f"at end {tuple(round(x, 2) for x in m['load_average_at_end'])} (the machine is shared: other jobs slow it down).",
        "",
        "| measurement | median s | target |",
        "|---|---|---|",
        f"| cached SmolLM2 load (model + tokenizer) | {r['cached_smollm2_load_s']['median_s']} | < 1 |",
        f"| full model build (+ weights load) | {r['mini_build_s']} | |",
        f"| yes/no, `classify` (stops once decided) | {r['yes_no_classify_s']['median_s']} | <= 0.5 |",
        f"| yes/no, full 12-token answer | {r['yes_no_full_answer_12_tokens_s']['median_s']} | |",
        f"| 40-token description | {r['describe_40_tokens_s']['median_s']} | <= 3 |",
        f"| peak RSS (GB) | {r['peak_rss_gb']} | <= 2.5 |",
        "",
        f"Prompt: {r['prompt_tokens']} tokens, of which {r['image_tokens']} image tokens.",
        "",
        "| part | median s |",
        "|---|---|",
    ]
    for name, value in r["parts"].items():
        lines.append(f"| {name} | {value['median_s'] if isinstance(value, dict) else value} |")
    lines += ["", "| batch | classify s | images/s | 12-token answer s | images/s |", "|---|---|---|---|---|"]
    for batch, t in r["batched_throughput"].items():
        lines.append(f"| {batch} | {t['classify_s']} | {t['classify_images_per_s']} | {t['answer12_s']} | {t['answer12_images_per_s']} |")
    lines += ["", f"Answer sample: `{r['answer_sample']!s}`", f"Description sample: `{r['description_sample']!s}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16", "int8"], default="auto")
    parser.add_argument("--weights", default="mini", help="'mini' (shipped), a trained weights file, or 'none' (untrained modules)")
    parser.add_argument("--out", type=Path, default=RESULTS / "lmm_bench_mini")
    args = parser.parse_args()
    result = run(args.threads, args.repeats, args.precision, args.weights)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(to_markdown(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
