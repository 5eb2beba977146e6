"""What the hardware computes natively (cheap to import: torch loads only when asked)."""

from __future__ import annotations

__all__ = ["native_bfloat16"]


def native_bfloat16(device: str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 matrix products in hardware.

    CPUs: AVX512-BF16 or AMX tiles (there oneDNN runs bf16 linear layers ~1.5-3x faster than
    float32; elsewhere bf16 is emulated and slower). CUDA: ``torch.cuda.is_bf16_supported()``.
    """
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
