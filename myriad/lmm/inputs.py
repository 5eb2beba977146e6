"""Validation and preparation of the model's tensor inputs (pixels, anomaly maps).

Anomaly maps: the published code feeds the expert's ``B x 1 x 224 x 224`` map as is
(no min-max scaling, no binarisation). Here any floating ``H x W`` map is accepted
and, when its size differs from the prompt generators' input (224), resized
bilinearly (``align_corners=False``) to it; values are never rescaled. Wrong ndim,
non-float dtypes, NaN/inf values and batch-size mismatches are refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from myriad.lmm.errors import AnomalyMapError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from myriad.lmm.config import VisionSettings

__all__ = ["prepare_maps", "check_pixels", "preprocess_images"]


def prepare_maps(maps: Any, batch: int, size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``B x 1 x size x size`` float32 maps from a tensor/array of ``H x W``, ``B x H x W`` or ``B x 1 x H x W``."""
    import numpy as np
    import torch.nn.functional as F

    if maps is None:
        raise AnomalyMapError(
            "an anomaly map is required while the VPG or TPG is on; pass use_vpg=False, use_tpg=False to run without an expert"
        )
    if isinstance(maps, np.ndarray):
        if maps.dtype.kind != "f":
            raise AnomalyMapError(f"anomaly map dtype: expected a floating-point array, got {maps.dtype}")
        maps = torch.from_numpy(np.ascontiguousarray(maps))
    elif isinstance(maps, (list, tuple)):
        if not maps:
            raise AnomalyMapError("anomaly maps: got an empty list")
        maps = torch.stack([prepare_maps(m, 1, size, device)[0, 0] for m in maps])
    if not isinstance(maps, torch.Tensor):
        raise AnomalyMapError(f"anomaly map: expected a torch tensor or numpy array, got {type(maps).__name__}")
    if not maps.is_floating_point():
        raise AnomalyMapError(f"anomaly map dtype: expected a floating-point tensor, got {maps.dtype}")
    shape = tuple(maps.shape)
    if maps.ndim == 2:
        maps = maps[None, None]
    elif maps.ndim == 3:
        maps = maps[:, None]
    elif maps.ndim == 4:
        if maps.shape[1] != 1:
            raise AnomalyMapError(f"anomaly map shape: expected B x 1 x H x W (one channel), got {shape}")
    else:
        raise AnomalyMapError(f"anomaly map shape: expected H x W, B x H x W or B x 1 x H x W, got {shape} ({maps.ndim}-D)")
    if maps.shape[0] != batch:
        raise AnomalyMapError(f"anomaly maps: expected {batch} map(s) (one per image), got {maps.shape[0]} (shape {shape})")
    if maps.shape[-1] < 1 or maps.shape[-2] < 1:
        raise AnomalyMapError(f"anomaly map shape: empty map {shape}")
    maps = maps.to(device=device, dtype=torch.float32)
    if not torch.isfinite(maps).all():
        raise AnomalyMapError("anomaly map values: contains NaN or infinity")
    if tuple(maps.shape[-2:]) != (size, size):
        maps = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
    return maps


def check_pixels(pixel_values: Any, image_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Check a preprocessed ``B x 3 x S x S`` float batch (see :func:`preprocess_images`)."""
    if not isinstance(pixel_values, torch.Tensor):
        raise InputError(
            f"pixel_values: expected a torch tensor B x 3 x {image_size} x {image_size}, got {type(pixel_values).__name__}; "
            "use MyriadLMM.preprocess(images) for RGB arrays or image paths"
        )
    if not pixel_values.is_floating_point():
        raise InputError(f"pixel_values dtype: expected float, got {pixel_values.dtype}")
    expected = (3, image_size, image_size)
    if pixel_values.ndim == 3:
        pixel_values = pixel_values[None]
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
        raise InputError(f"pixel_values shape: expected B x 3 x {image_size} x {image_size}, got {tuple(pixel_values.shape)}")
    if not torch.isfinite(pixel_values).all():
        raise InputError("pixel_values: contains NaN or infinity")
    return pixel_values.to(device=device)


def preprocess_images(images: Sequence["np.ndarray | str"], settings: "VisionSettings") -> torch.Tensor:
    """RGB arrays or image paths -> normalised ``B x 3 x S x S`` float32.

    BLIP-2 preprocessing: resize the shorter side to ``S`` (bicubic), center-crop ``S``,
    then the backbone's normalisation (CLIP for EVA ViT-g, ``(x-0.5)/0.5`` for Lite0).
    """
    from myriad.images import check_batch, to_tensor

    size = settings.image_size
    out = []
    for image in check_batch(images):
        h, w = image.shape[:2]
        scale = size / min(h, w)
        resized = (max(size, round(h * scale)), max(size, round(w * scale)))
        t = to_tensor([image], resized, normalisation=settings.normalisation, interpolation="bicubic")
        top, left = (t.shape[-2] - size) // 2, (t.shape[-1] - size) // 2
        out.append(t[..., top : top + size, left : left + size])
    return torch.cat(out)
