"""Token backbones for MuSc: per-layer feature grids plus one embedding per image.

Every backbone maps a normalised ``B x 3 x S x S`` batch to ``(grids, embeddings)``:
``grids`` is one ``B x C x h x w`` tensor per tapped layer, ``embeddings`` is ``B x D``
(the image embedding RsCIN compares). Three families:

- the embedded EfficientNet-Lite0 (or any timm CNN from a local file): stage outputs
  of :class:`myriad.backbone.FeatureBackbone`; the embedding is the global average of
  the deepest tapped stage;
- ``open_clip:<arch>`` ViTs (CLIP ViT-L-14-336 in the paper): raw block outputs (before
  ``ln_post``) without the CLS token; the embedding is CLIP's image embedding; the
  positional embedding is resized bicubically when run off its native size (518 px);
- ``timm:<vit>`` ViTs (DINO, DINOv2): raw block outputs from ``forward_intermediates``;
  the embedding is the model's pooled (pre-logits) feature.

Nothing is downloaded: weights come from local files only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from myriad.api import ConfigError, WeightsError, cached, load_state_dict_strict, resize_positional_embedding, vit_tokens

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from myriad_experts_musc.plugin import MuScConfig

#: Where the usual weights come from (shown when a file is missing).
WEIGHTS_HINT = {
    "open_clip:ViT-L-14-336": "OpenAI's ViT-L-14-336px.pt (the file `clip` downloads) or open_clip's "
    "open_clip_pytorch_model.bin for ViT-L-14-336 / openai",
    "timm:vit_large_patch14_dinov2": "timm's model.safetensors of vit_large_patch14_dinov2.lvd142m "
    "(or Meta's dinov2_vitl14_pretrain.pth)",
}


def read_state_dict(path: str | Path) -> dict[str, "torch.Tensor"]:
    """The tensors of a local file: safetensors, a ``.pth``/``.bin`` (weights_only) or an OpenAI TorchScript ``.pt``.

    ``state_dict``/``model``/``module`` containers are unwrapped and ``module.`` prefixes
    dropped (:func:`myriad.io.load_torch_checkpoint`).
    """
    from myriad.api import CHECKPOINT_WRAPPERS, load_torch_checkpoint

    return load_torch_checkpoint(
        path, what="weights file", torchscript=True, unwrap=CHECKPOINT_WRAPPERS, tensors_only=True, strip_prefix="module."
    )


def default_vit_layers(depth: int) -> list[int]:
    """1-indexed blocks at a quarter, half, three quarters and all of the depth (6/12/18/24 for 24 blocks)."""
    return sorted({max(1, round(depth * f)) for f in (0.25, 0.5, 0.75, 1.0)})


def _check_vit_layers(layers: Sequence[int], depth: int, name: str) -> list[int]:
    bad = [layer for layer in layers if not 1 <= layer <= depth]
    if bad:
        raise ConfigError(f"{name} has {depth} blocks (1-indexed); layers {bad} are out of range")
    return list(layers)


class CnnTokens:
    """Stage outputs of a timm CNN (default: the embedded EfficientNet-Lite0)."""

    default_image_size = 320
    default_layers = (2,)  # stride 8; chosen by measurement on real photos (README, *Defaults*)
    default_r_list = (3,)  # one 3 x 3 neighbourhood (README, *Defaults*)
    default_rscin_k: tuple[int, ...] = ()  # RsCIN off: with CNN embeddings it lowered local AUROC (README)

    def __init__(self, name: str, weights: str | None, layers: Sequence[int] | None, device: str) -> None:
        from myriad.api import FeatureBackbone

        self.layers = tuple(layers) if layers is not None else self.default_layers
        try:
            self.features = FeatureBackbone(name, out_indices=self.layers, weights=weights, device=device)
        except (IndexError, AssertionError) as exc:
            raise ConfigError(f"backbone {name!r} has no stages {self.layers}: {exc}") from exc
        self.normalisation = self.features.normalisation
        self.patch = 1

    def __call__(self, batch: "torch.Tensor") -> tuple[list["torch.Tensor"], "torch.Tensor"]:
        grids = self.features(batch)
        return grids, grids[-1].float().mean(dim=(2, 3))


def _vit_image_size(patch: int, native: int, wanted: int | None) -> tuple[int, int]:
    """A ViT's default input side (518 px for patch-14 towers, else its native size) and the side in use."""
    default = 518 if patch == 14 else native
    size = wanted or default
    if size % patch:
        raise ConfigError(f"image_size {size} is not a multiple of the patch size {patch}")
    return default, size


class OpenClipTokens:
    """An open_clip ViT (OpenAI or open_clip weights from a local file), taps at 1-indexed blocks."""

    default_r_list = (1, 3, 5)  # the paper's LNAMD degrees
    default_rscin_k: tuple[int, ...] = (1, 2, 3)  # the paper's MVTec k-list

    def __init__(
        self,
        arch: str,
        weights: str | None,
        layers: Sequence[int] | None,
        image_size: int | None,
        quick_gelu: bool,
        architecture: dict[str, Any] | None,
        device: str,
        visual: "nn.Module | None" = None,
    ) -> None:
        import torch

        # ``visual``: an already built open_clip VisionTransformer (benchmarks with random weights)
        self.visual = visual if visual is not None else build_open_clip_visual(arch, weights, quick_gelu, architecture)
        depth = len(self.visual.transformer.resblocks)
        self.patch = int(self.visual.patch_size[0])
        self.default_image_size, self.image_size = _vit_image_size(self.patch, int(self.visual.image_size[0]), image_size)
        grid = (self.image_size // self.patch,) * 2
        with torch.no_grad():
            resized = resize_positional_embedding(self.visual.positional_embedding.data, grid)
        self.visual.positional_embedding = torch.nn.Parameter(resized, requires_grad=False)
        self.layers = _check_vit_layers(layers or default_vit_layers(depth), depth, f"open_clip:{arch}")
        self.device = torch.device(device)
        self.visual.to(self.device).eval().requires_grad_(False)
        self.normalisation = "clip"

    def __call__(self, batch: "torch.Tensor") -> tuple[list["torch.Tensor"], "torch.Tensor"]:
        import torch

        with torch.inference_mode():
            tokens, pooled = vit_tokens(self.visual, batch.to(self.device), [i - 1 for i in self.layers])
        side = batch.shape[-1] // self.patch
        grids = [t[:, 1:].transpose(1, 2).reshape(t.shape[0], -1, side, side) for t in tokens]
        return grids, pooled


def build_open_clip_visual(
    arch: str, weights: str | None, quick_gelu: bool, architecture: dict[str, Any] | None
) -> "nn.Module":
    """The vision tower of open_clip architecture ``arch`` with weights loaded strictly from a local file."""
    import open_clip

    cfg = architecture or open_clip.get_model_config(arch)
    if cfg is None:
        raise ConfigError(f"open_clip has no architecture {arch!r} (e.g. ViT-L-14-336, ViT-B-16)")
    vision_cfg = dict(cfg["vision_cfg"])
    if vision_cfg.get("timm_model_name") or isinstance(vision_cfg.get("layers"), (list, tuple)):
        raise ConfigError(f"open_clip:{arch} is not a plain ViT; MuSc taps ViT blocks")
    if weights is None:
        hint = WEIGHTS_HINT.get(f"open_clip:{arch}", f"the open_clip or OpenAI weights of {arch}")
        raise WeightsError(f"backbone open_clip:{arch} needs a local weights file: download {hint} and set weights=PATH")
    model = open_clip.model.CLIP(
        embed_dim=cfg["embed_dim"], vision_cfg=vision_cfg, text_cfg=cfg["text_cfg"], quick_gelu=quick_gelu
    )
    visual = model.visual
    del model
    state = read_state_dict(weights)
    visual_state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    if not visual_state:
        raise WeightsError(f"{weights}: no 'visual.*' keys: not a CLIP checkpoint in OpenAI/open_clip layout")
    load_state_dict_strict(visual, visual_state, str(weights))
    return visual


class TimmVitTokens:
    """A timm ViT (DINO, DINOv2, ...) from a local file; taps are 1-indexed blocks."""

    default_r_list = (1, 3, 5)  # the paper's LNAMD degrees
    default_rscin_k: tuple[int, ...] = (1, 2, 3)  # the paper's MVTec k-list

    def __init__(
        self,
        name: str,
        weights: str | None,
        layers: Sequence[int] | None,
        image_size: int | None,
        architecture: dict[str, Any] | None,
        device: str,
    ) -> None:
        import importlib

        import timm
        import torch

        kwargs = dict(architecture or {})
        try:
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        except RuntimeError as exc:
            raise ConfigError(f"unknown timm model {name!r}: {exc}") from exc
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "patch_embed"):
            raise ConfigError(f"timm:{name} is not a ViT with forward_intermediates")
        self.patch = int(model.patch_embed.patch_size[0])
        native = int(model.patch_embed.img_size[0])
        self.default_image_size, self.image_size = _vit_image_size(self.patch, native, image_size)
        if self.image_size != native:
            model = timm.create_model(name, pretrained=False, num_classes=0, **{**kwargs, "img_size": self.image_size})
        if weights is None:
            hint = WEIGHTS_HINT.get(f"timm:{name}", f"the timm weights of {name}")
            raise WeightsError(f"backbone timm:{name} needs a local weights file: download {hint} and set weights=PATH")
        state = read_state_dict(weights)
        filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None:
            state = filter_fn(state, model)  # original DINO/DINOv2 key layouts, position-embedding resampling
        expected = model.state_dict()
        state = {k: v for k, v in state.items() if k in expected or not k.startswith(("head.", "fc_norm.", "head_drop."))}
        load_state_dict_strict(model, state, str(weights))
        depth = len(model.blocks)
        self.layers = _check_vit_layers(layers or default_vit_layers(depth), depth, f"timm:{name}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        mean = tuple(round(m, 3) for m in model.pretrained_cfg.get("mean", (0.485, 0.456, 0.406)))
        self.normalisation = {(0.481, 0.458, 0.408): "clip", (0.5, 0.5, 0.5): "half"}.get(mean, "imagenet")

    def __call__(self, batch: "torch.Tensor") -> tuple[list["torch.Tensor"], "torch.Tensor"]:
        import torch

        with torch.inference_mode():
            final, grids = self.model.forward_intermediates(
                batch.to(self.device), indices=[i - 1 for i in self.layers], norm=False, output_fmt="NCHW"
            )
            pooled = self.model.forward_head(final, pre_logits=True)
        return list(grids), pooled


#: Recently built backbones (frozen, inference only), so that experts built with the same
#: settings (calibration folds, repeated runs) share one model instead of reloading it:
#: MuSc's own group of the host's model cache, holding the two most recent.
_CACHE_GROUP = "musc-backbones"
_CACHE_SIZE = 2


def build_backbone(config: "MuScConfig") -> "CnnTokens | OpenClipTokens | TimmVitTokens":
    """The token backbone named by ``config.backbone`` (shared with recent experts of the same settings)."""
    import json
    import os

    stamp = os.stat(config.weights).st_mtime_ns if config.weights and os.path.isfile(config.weights) else None
    key = (
        config.backbone,
        config.weights,
        stamp,
        tuple(config.layers) if config.layers is not None else None,
        config.image_size,
        config.quick_gelu,
        json.dumps(config.architecture, sort_keys=True),
        config.device,
    )
    return cached(key, lambda: _build(config), group=_CACHE_GROUP, keep=_CACHE_SIZE)


def _build(config: "MuScConfig") -> "CnnTokens | OpenClipTokens | TimmVitTokens":
    family, sep, name = config.backbone.partition(":")
    if not sep:
        if config.architecture:
            raise ConfigError("`architecture` applies to open_clip:/timm: ViT backbones only")
        return CnnTokens(config.backbone, config.weights, config.layers, config.device)
    if family == "open_clip":
        return OpenClipTokens(
            name, config.weights, config.layers, config.image_size, config.quick_gelu, config.architecture, config.device
        )
    if family == "timm":
        return TimmVitTokens(name, config.weights, config.layers, config.image_size, config.architecture, config.device)
    raise ConfigError(f"unknown backbone family {family!r} in {config.backbone!r}: use open_clip:<arch> or timm:<vit>")
