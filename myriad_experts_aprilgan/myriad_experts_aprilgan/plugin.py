"""Registers the ``aprilgan`` expert. Only cheap imports here: discovery must stay instant."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from myriad.api import check_layer_indices, hookimpl

CLIP = "clip"


class AprilGANConfig(BaseModel):
    """Settings of the AprilGAN expert (defaults: the paper's CLIP ViT-L-14-336 at 518 px)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["zero_shot", "few_shot"] = "zero_shot"
    clip_weights: str | None = Field(
        None, description="local CLIP weights: OpenAI's ViT-L-14-336px.pt or an open_clip state dict"
    )
    adapter_weights: str | None = Field(
        None, description="local AprilGAN adapters: mvtec_pretrained.pth / visa_pretrained.pth (key trainable_linearlayer)"
    )
    arch: str = Field("ViT-L-14-336", description="open_clip architecture name")
    architecture: dict[str, Any] | None = Field(None, description="override of the open_clip model config (tests)")
    quick_gelu: bool = Field(True, description="QuickGELU activations (True for OpenAI weights)")
    image_size: int | None = Field(None, ge=16, le=2048, description="None: 518 (224 when only a CNN is used)")
    layers: list[int] = Field([6, 12, 18, 24], min_length=1, description="1-indexed blocks feeding the adapters")
    few_shot_layers: list[int] | None = Field(None, description="1-indexed blocks (CLIP) or stages (CNN) of the memory")
    few_shot_backbone: str = Field(
        CLIP, description="'clip' (raw CLIP tokens, as AprilGAN) or a timm CNN such as 'efficientnet_lite0' (embedded)"
    )
    few_shot_backbone_weights: str | None = Field(None, description="local weights of a non-embedded timm CNN")
    zero_shot_branch: bool = Field(
        True, description="few_shot: add the zero-shot (adapter + prompt) map; False: memory branch only"
    )
    class_name: str | None = Field(None, description="product name for the prompts; None: 'object' (with a warning)")
    device: str = Field("cpu", description="torch device, e.g. 'cpu' or 'cuda:0'")
    batch_size: int = Field(4, ge=1, description="images per forward pass")

    @field_validator("layers", "few_shot_layers")
    @classmethod
    def _distinct(cls, value: list[int] | None) -> list[int] | None:
        return check_layer_indices(value)


@hookimpl
def register_experts(register):  # type: ignore[no-untyped-def]
    register(
        "aprilgan",
        factory="myriad_experts_aprilgan.expert:AprilGANExpert",
        config=AprilGANConfig,
        modes=["zero_shot", "few_shot"],
        description="AprilGAN: CLIP patch tokens through trained adapters vs. state prompts; few-shot adds a memory.",
    )
