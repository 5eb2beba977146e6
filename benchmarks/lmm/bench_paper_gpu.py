"""Seconds per image of the ``paper`` Myriad (EVA ViT-g + Q-Former + 7B LLaMA) on one GPU, random weights.

Self-contained: no downloads, no checkpoints. The model is built on the meta device,
materialised on the GPU with random weights (norms at 1), in bf16 by default, with an
offline byte-level BPE tokenizer (ids < 32000). Random weights never emit the ``###``
stop, so every answer decodes exactly ``--new-tokens`` tokens (12 ~ the reference
answer "Yes, there exists anomalies in the image.###" in Vicuna tokens).

Measures at each batch size: the image encoding (ViT + LoRRA + Q-Former + VPG + TPG),
a 1-token answer (prefill; what a yes/no decision needs), the full answer, and peak
GPU memory. Prints JSON (and writes it with ``--out``). Paper reference: 0.5 s/image,
21.0 GB on an A800.

    python benchmarks/lmm/bench_paper_gpu.py [--batches 1 8] [--dtype bfloat16] [--new-tokens 12]
    python benchmarks/lmm/bench_paper_gpu.py --tiny --device cpu   # smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_random_model(tiny: bool, device, dtype):
    """A ``paper``-architecture MyriadLMM with random weights on ``device`` (no CPU copy of the 7B LLM)."""
    import torch
    from torch import nn

    from myriad.lmm.config import paper_config
    from myriad.lmm.model import MyriadLMM
    from myriad.lmm.tiny import build_tiny_tokenizer, tiny_paper_config

    tokenizer = build_tiny_tokenizer(vocab_size=2000)
    name = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}[dtype]
    config = tiny_paper_config(len(tokenizer)) if tiny else paper_config()
    config = config.replace(vision_dtype=name, llm_dtype=name)
    model = MyriadLMM.empty(config, tokenizer)
    model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
        for m in model.modules():
            if isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("RMSNorm"):
                m.weight.fill_(1.0)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
    model.to(dtype)  # the small modules too (the published code runs them under autocast)
    inner = model.language_model.model
    with torch.device(device):  # rotary buffers are not parameters: rebuild them (float32)
        inner.rotary_emb = type(inner.rotary_emb)(config=model.language_model.config)
    return model.finalize().eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="toy dimensions (smoke test, e.g. on CPU)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    import myriad.lmm.model  # noqa: F401  (imports are not part of build_s)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    model = build_random_model(args.tiny, device, dtype)
    build_s = time.perf_counter() - start
    size = model.config.vision.image_size
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "dtype": args.dtype,
        "tiny": args.tiny,
        "build_s": round(build_s, 2),
        "params": sum(p.numel() for p in model.parameters()),
        "new_tokens": args.new_tokens,
        "batches": {},
    }
    for batch in args.batches:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        g = torch.Generator(device=device).manual_seed(batch)
        pixels = torch.randn(batch, 3, size, size, device=device, generator=g)
        maps = torch.rand(batch, 1, 224, 224, device=device, generator=g)
        with torch.inference_mode():
            encode = _timed(lambda: model.encode_image(pixels, maps), device, args.repeats)
            one = _timed(lambda: model.generate(pixels, maps, max_new_tokens=1, min_new_tokens=1), device, args.repeats)
            full = _timed(
                lambda: model.generate(pixels, maps, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens),
                device,
                max(2, args.repeats // 2),
            )
            prompt = model.generate(pixels[:1], maps[:1], max_new_tokens=1, return_result=True).prompt_lengths[0]
        entry = {
            "prompt_tokens": prompt,
            "encode_image_s_per_image": round(encode / batch, 4),
            "yes_no_1_token_s_per_image": round(one / batch, 4),
            f"answer_{args.new_tokens}_tokens_s_per_image": round(full / batch, 4),
            "answer_s_per_batch": round(full, 4),
        }
        if device.type == "cuda":
            entry["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1024**3, 2)
        result["batches"][str(batch)] = entry
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
