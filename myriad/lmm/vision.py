"""The vision-expert-guided vision encoder and its two interchangeable backbones.

Pipeline (paper Sec. 3.3): backbone tokens (pre-norm) -> LoRRA -> ``ln_vision`` ->
Q-Former over ``cat([query_tokens ; VPG(map)])`` (all queries self-attend and
cross-attend to the adapted tokens) -> ``language_projection`` on every query output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from myriad.lmm.lorra import build_lorra
from myriad.lmm.vpg import build_vpg

if TYPE_CHECKING:  # pragma: no cover
    from myriad.lmm.config import MyriadConfig, VisionSettings

__all__ = [
    "EvaViTBackbone",
    "Lite0TokenBackbone",
    "VEGuidedVisionEncoder",
    "build_backbone",
    "build_language_projection",
    "build_ln_vision",
    "build_qformer",
    "build_query_tokens",
    "module_dtype",
]


def module_dtype(module: nn.Module) -> torch.dtype:
    """Dtype of a module's first floating parameter (float32 if it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


class EvaViTBackbone(nn.Module):
    """EVA ViT-g as transformers' ``Blip2VisionModel``, returning the last block's output without a norm.

    ``Blip2VisionModel.forward`` applies ``post_layernorm``; Myriad's LoRRA must run
    before that norm, so the norm is removed here (``post_layernorm`` is an Identity)
    and lives in :class:`VEGuidedVisionEncoder` as ``ln_vision``.
    """

    def __init__(self, settings: "VisionSettings") -> None:
        super().__init__()
        from myriad.lmm._hf import blip2

        Blip2VisionConfig, Blip2VisionModel, _, _ = blip2()
        config = Blip2VisionConfig(
            hidden_size=settings.hidden_size,
            intermediate_size=settings.intermediate_size,
            num_hidden_layers=settings.num_layers,
            num_attention_heads=settings.num_heads,
            image_size=settings.image_size,
            patch_size=settings.patch_size,
            layer_norm_eps=settings.layer_norm_eps,
            qkv_bias=settings.qkv_bias,
        )
        self.vision_model = Blip2VisionModel(config)
        self.vision_model.post_layernorm = nn.Identity()
        self.token_dim = settings.hidden_size
        self.num_tokens = settings.num_tokens

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``B x 3 x 224 x 224`` -> ``B x 257 x 1408`` (pre-norm tokens, CLS first)."""
        vm = self.vision_model
        hidden = vm.embeddings(pixel_values.to(module_dtype(vm)))
        return vm.encoder(inputs_embeds=hidden).last_hidden_state


class Lite0TokenBackbone(nn.Module):
    """The embedded EfficientNet-Lite0 feature maps turned into visual tokens.

    Stages ``lite0_stages`` (timm ``out_indices``) are computed, every later stage is
    resized bilinearly onto the grid of the first and the channels are concatenated;
    the grid is flattened row-major into tokens and, optionally, a CLS-like token (the
    mean of the grid tokens) is put first, as in a ViT.
    """

    def __init__(self, settings: "VisionSettings") -> None:
        super().__init__()
        import timm

        self.stages = tuple(settings.lite0_stages)
        self.cnn = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=self.stages)
        self.cls_token = settings.lite0_cls_token
        self.token_dim = settings.token_dim
        self.num_tokens = settings.num_tokens

    def load_embedded_weights(self) -> None:
        """Copy the real ImageNet weights of the embedded Lite0 (``myriad.backbone``) into ``cnn``."""
        from myriad.backbone import EMBEDDED, load_timm_model

        real = load_timm_model(EMBEDDED, features_only=True, out_indices=self.stages)
        self.cnn.load_state_dict(real.state_dict(), strict=True, assign=True)
        self.cnn.eval()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        feats = self.cnn(pixel_values.to(module_dtype(self.cnn)))
        grid = feats[0].shape[-2:]
        maps = [feats[0]] + [F.interpolate(f, size=grid, mode="bilinear", align_corners=False) for f in feats[1:]]
        tokens = torch.cat(maps, dim=1).flatten(2).transpose(1, 2)
        if self.cls_token:
            tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        return tokens


def build_backbone(settings: "VisionSettings") -> nn.Module:
    """The backbone named by ``settings.kind`` with random (or meta) weights."""
    if settings.kind == "eva_vit":
        return EvaViTBackbone(settings)
    return Lite0TokenBackbone(settings)


# Builders of the vision-side parts (also used to re-initialise a part of a model built on the meta device;
# see myriad.lmm.parts). LoRRA's and the VPG's are in their own modules.
def build_ln_vision(config: "MyriadConfig") -> nn.LayerNorm:
    """The LayerNorm after LoRRA (BLIP-2's ``ln_vision``)."""
    return nn.LayerNorm(config.vision.token_dim, eps=config.vision.ln_vision_eps)


def build_query_tokens(config: "MyriadConfig") -> nn.Parameter:
    """The Q-Former's learned query tokens ``1 x num_query_tokens x hidden``."""
    tokens = torch.empty(1, config.qformer.num_query_tokens, config.qformer.hidden_size)
    nn.init.normal_(tokens, std=0.02)  # BLIP-2's initializer_range
    return nn.Parameter(tokens)


def build_qformer(config: "MyriadConfig") -> nn.Module:
    """A transformers ``Blip2QFormerModel`` cross-attending to the backbone's tokens."""
    from myriad.lmm._hf import blip2

    _, _, Blip2QFormerConfig, Blip2QFormerModel = blip2()
    q = config.qformer
    qconfig = Blip2QFormerConfig(
        hidden_size=q.hidden_size,
        num_hidden_layers=q.num_layers,
        num_attention_heads=q.num_heads,
        intermediate_size=q.intermediate_size,
        cross_attention_frequency=q.cross_attention_frequency,
        encoder_hidden_size=config.vision.token_dim,
        hidden_dropout_prob=q.dropout,
        attention_probs_dropout_prob=q.dropout,
        layer_norm_eps=q.layer_norm_eps,
        use_qformer_text_input=False,
    )
    return Blip2QFormerModel(qconfig)


def build_language_projection(config: "MyriadConfig") -> nn.Linear:
    """The linear map from Q-Former outputs to the LLM's embedding width."""
    proj = nn.Linear(config.qformer.hidden_size, config.llm.hidden_size)
    std = config.qformer.projection_init_std
    if std is not None:
        nn.init.normal_(proj.weight, std=std)
        nn.init.zeros_(proj.bias)
    return proj


class VEGuidedVisionEncoder(nn.Module):
    """Backbone -> LoRRA -> ln_vision -> Q-Former(query tokens ; VPG queries) -> projection."""

    def __init__(self, config: "MyriadConfig") -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config.vision)
        self.lorra = build_lorra(config) if config.use_lorra else None
        self.ln_vision = build_ln_vision(config)
        self.vpg = build_vpg(config) if config.use_vpg else None
        self.query_tokens = build_query_tokens(config)
        self.qformer = build_qformer(config)
        self.language_projection = build_language_projection(config)

    @property
    def num_output_tokens(self) -> int:
        return self.query_tokens.shape[1] + (self.vpg.num_tokens if self.vpg is not None else 0)

    def encode_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Adapted, normalised visual tokens ``B x N x token_dim`` (float32 unless the norm is cast)."""
        tokens = self.backbone(pixel_values)
        if self.lorra is not None:
            tokens = self.lorra(tokens)
        return self.ln_vision(tokens.to(module_dtype(self.ln_vision)))

    def forward(self, pixel_values: torch.Tensor, maps: torch.Tensor | None = None, use_vpg: bool = True) -> torch.Tensor:
        """``B x (num_query_tokens [+ vpg tokens]) x llm_hidden`` visual tokens for the LLM."""
        tokens = self.encode_tokens(pixel_values)
        queries = self.query_tokens.expand(tokens.shape[0], -1, -1)
        if use_vpg:
            if self.vpg is None:
                raise ValueError("use_vpg=True but this model was built without a VPG (config.use_vpg=False)")
            if maps is None:
                raise ValueError("the VPG needs an anomaly map")
            queries = torch.cat([queries, self.vpg(maps).to(queries.dtype)], dim=1)
        q_dtype = module_dtype(self.qformer)
        out = self.qformer(
            query_embeds=queries.to(q_dtype),
            encoder_hidden_states=tokens.to(q_dtype),
        ).last_hidden_state
        proj = self.language_projection
        return proj(out.to(proj.weight.dtype))
