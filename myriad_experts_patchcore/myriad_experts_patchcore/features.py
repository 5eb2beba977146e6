"""Patch features: pure tensor functions plus a thin wrapper around the backbone.

PatchCore describes every location of a mid-level CNN feature grid by its local
neighbourhood:

1. each chosen stage is averaged over a 3 x 3 neighbourhood (stride 1, padding 1);
2. deeper (coarser) stages are bilinearly resized to the grid of the first stage;
3. the stages are combined, either

   - ``concat`` (anomalib): channels concatenated, ``D = sum(C_l)``; or
   - ``pool`` (the original implementation): each stage's channel vector is
     adaptive-average-pooled to ``embed_dim``, the stacked vectors are pooled again
     to ``embed_dim``. Every stage then weighs the same whatever its width.

The output of :func:`aggregate` is ``B x D x h x w``; :func:`to_patch_rows` turns it
into the ``(B*h*w) x D`` float32 rows that the memory bank and the coreset use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from myriad.api import FeatureBackbone

Aggregation = Literal["concat", "pool"]

#: Default stages (timm ``out_indices``) of each known backbone. Index i of a timm
#: ``features_only`` model is the stage with stride 2**(i+1) for these CNNs.
DEFAULT_LAYERS = {
    # stride 8 + 16 (40 + 112 channels): chosen by measurement on the realistic benchmark
    # (real photos, defects under 1 % of the image), see the README ("Choosing the default stages and input size")
    "efficientnet_lite0": (2, 3),
    "efficientnet_lite1": (2, 3),
    "efficientnet_lite2": (2, 3),
    # PatchCore's layer2 + layer3
    "wide_resnet50_2": (2, 3),
}
FALLBACK_LAYERS = (2, 3)


def default_layers(backbone: str) -> tuple[int, ...]:
    """The stages used when the config leaves ``layers`` unset."""
    return DEFAULT_LAYERS.get(backbone, FALLBACK_LAYERS)


def local_average(feature: "torch.Tensor", size: int = 3) -> "torch.Tensor":
    """Average every location over its ``size x size`` neighbourhood (stride 1, zero padding)."""
    import torch.nn.functional as F

    if size <= 1:
        return feature
    return F.avg_pool2d(feature, kernel_size=size, stride=1, padding=size // 2)


def _pool_channels(x: "torch.Tensor", dim: int) -> "torch.Tensor":
    """Adaptive average pooling along the channel axis of a ``B x C x h x w`` tensor."""
    import torch.nn.functional as F

    b, c, h, w = x.shape
    if c == dim:
        return x
    rows = x.permute(0, 2, 3, 1).reshape(b * h * w, 1, c)
    pooled = F.adaptive_avg_pool1d(rows, dim)
    return pooled.reshape(b, h, w, dim).permute(0, 3, 1, 2)


def aggregate(
    features: Sequence["torch.Tensor"],
    aggregation: Aggregation = "concat",
    embed_dim: int = 1024,
    neighbourhood: int = 3,
) -> "torch.Tensor":
    """Combine stage feature maps into one ``B x D x h x w`` patch-feature grid.

    ``features`` are the backbone's maps, shallowest first. The grid is that of the
    first map; ``D`` is ``sum(C_l)`` for ``concat`` and ``embed_dim`` for ``pool``.
    """
    import torch
    import torch.nn.functional as F

    if not features:
        raise ValueError("aggregate() needs at least one feature map")
    height, width = features[0].shape[-2:]
    maps = []
    for feature in features:
        f = local_average(feature.float(), neighbourhood)
        if f.shape[-2:] != (height, width):
            f = F.interpolate(f, size=(height, width), mode="bilinear", align_corners=False)
        maps.append(f)
    if aggregation == "concat":
        return torch.cat(maps, dim=1)
    if aggregation == "pool":
        stacked = torch.cat([_pool_channels(f, embed_dim) for f in maps], dim=1)
        return _pool_channels(stacked, embed_dim)
    raise ValueError(f"unknown aggregation {aggregation!r} (expected 'concat' or 'pool')")


def feature_dim(channels: Sequence[int], aggregation: Aggregation, embed_dim: int) -> int:
    """``D`` of :func:`aggregate` for stages with ``channels``."""
    return int(sum(channels)) if aggregation == "concat" else int(embed_dim)


def to_patch_rows(grid: "torch.Tensor") -> "np.ndarray":
    """``B x D x h x w`` -> C-contiguous float32 ``(B*h*w) x D`` rows (row = b*h*w + y*w + x)."""
    import numpy as np

    b, d, h, w = grid.shape
    rows = grid.permute(0, 2, 3, 1).reshape(b * h * w, d)
    return np.ascontiguousarray(rows.detach().cpu().numpy(), dtype=np.float32)


def fold_batchnorm(model: "torch.nn.Module", check_input: "torch.Tensor | None" = None) -> "torch.nn.Module":
    """Fold eval-mode BatchNorm layers into the convolution registered just before them.

    A frozen BatchNorm is an affine map per channel, so ``bn(conv(x))`` equals a
    convolution with rescaled weights and a bias: one memory pass saved per layer
    (BatchNorm is about a quarter of EfficientNet-Lite0's CPU time). A BatchNorm
    with a fused activation (timm ``BatchNormAct2d``) is replaced by that activation.
    Works on a copy; when ``check_input`` is given and the folded model's outputs
    differ from the original's, the original is returned unchanged.
    """
    import copy

    import torch
    from torch import nn

    folded = copy.deepcopy(model)
    changed = 0
    for parent in folded.modules():
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
                continue
            if bn.running_mean is None or bn.num_features != conv.out_channels or conv.groups < 1:
                continue
            with torch.no_grad():
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
                shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
                conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
            after = nn.Sequential(*(m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None))
            setattr(parent, bn_name, after if len(after) else nn.Identity())
            changed += 1
    if not changed:
        return model
    folded.eval()
    if check_input is not None:
        with torch.inference_mode():
            reference = model(check_input)
            candidate = folded(check_input)
        reference = reference if isinstance(reference, (list, tuple)) else [reference]
        candidate = candidate if isinstance(candidate, (list, tuple)) else [candidate]
        for a, b in zip(reference, candidate):
            if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(a.abs().max()) + 1e-5):
                return model
    return folded


class PatchFeatureExtractor:
    """Images -> patch features with a frozen :class:`~myriad.backbone.FeatureBackbone`."""

    def __init__(
        self,
        backbone: "FeatureBackbone",
        image_size: int,
        aggregation: Aggregation = "concat",
        embed_dim: int = 1024,
    ) -> None:
        self.backbone = backbone
        self.image_size = int(image_size)
        self.aggregation: Aggregation = aggregation
        self.embed_dim = int(embed_dim)
        self.dim = feature_dim(backbone.info.channels, aggregation, embed_dim)
        first = backbone.info.reductions[0]
        # expected patch grid, ceil(size / stride); set exactly by every forward
        self.grid = (-(-self.image_size // first), -(-self.image_size // first))

    def preprocess(self, images: Sequence["np.ndarray"]) -> "torch.Tensor":
        """RGB uint8 images (any sizes) -> normalised ``B x 3 x S x S`` batch."""
        from myriad.api import to_tensor

        return to_tensor(images, self.image_size, normalisation=self.backbone.normalisation)  # type: ignore[arg-type]

    def grid_features(self, batch: "torch.Tensor") -> "torch.Tensor":
        """Normalised batch -> ``B x D x h x w`` patch features (float32, on the backbone's device)."""
        import torch

        with torch.inference_mode():
            grid = aggregate(self.backbone(batch), self.aggregation, self.embed_dim)
        self.grid = (int(grid.shape[-2]), int(grid.shape[-1]))
        return grid

    def __call__(self, images: Sequence["np.ndarray"]) -> "torch.Tensor":
        return self.grid_features(self.preprocess(images))
