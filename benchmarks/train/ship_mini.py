"""Copy trained Myriad-mini weights into the package as float16 (half the size; same answers).

    .venv/bin/python benchmarks/train/ship_mini.py [runs/myriad-mini/trainable.safetensors]

Writes ``myriad/weights/myriad-mini.safetensors`` with the training run's metadata, and
checks that the float16 copy loads into ``MyriadLMM.mini()`` strictly.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    import torch
    from safetensors import safe_open

    from myriad.inspection import SHIPPED_MINI_WEIGHTS
    from myriad.io import load_tensors, save_tensors

    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "myriad-mini" / "trainable.safetensors"
    if not source.is_file():
        raise SystemExit(f"{source}: no trained weights; run `myriad train --config benchmarks/train/mini.toml` first")
    with safe_open(str(source), "pt") as handle:
        metadata = dict(handle.metadata() or {})
    tensors = load_tensors(source)
    half = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()}
    worst = max(float((half[k].float() - v.float()).abs().max()) for k, v in tensors.items())
    metadata.update({"dtype": "float16", "source": source.name})
    save_tensors(half, SHIPPED_MINI_WEIGHTS, metadata=metadata)
    from myriad.inspection import load_lmm

    load_lmm("mini")  # strict load of every trainable part
    size = SHIPPED_MINI_WEIGHTS.stat().st_size / 2**20
    print(f"wrote {SHIPPED_MINI_WEIGHTS} ({size:.1f} MiB, {len(half)} tensors, max float16 rounding {worst:.2e})")


if __name__ == "__main__":
    main()
