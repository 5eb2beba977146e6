"""Registers the ``anomalygpt`` expert. Only cheap imports here: discovery must stay instant."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from myriad.api import check_layer_indices, hookimpl

IMAGEBIND = "imagebind"


class ImageBindArchitecture(BaseModel):
    """Sizes of the ImageBind vision and text towers (defaults: ImageBind-Huge) and AnomalyGPT's decoder."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(224, ge=8)
    patch_size: int = Field(14, ge=1)
    width: int = Field(1280, ge=1)
    layers: int = Field(32, ge=1)
    heads: int = Field(16, ge=1)
    embed_dim: int = Field(1024, ge=1, description="joint embedding size (vision head and text head outputs)")
    text_width: int = Field(1024, ge=1)
    text_layers: int = Field(24, ge=1)
    text_heads: int = Field(16, ge=1)
    context_length: int = Field(77, ge=2)
    vocab_size: int = Field(49408, ge=2)
    decoder_dim: int = Field(1024, ge=1, description="output size of each of AnomalyGPT's image_decoder linears")


class AnomalyGPTConfig(BaseModel):
    """Settings of the AnomalyGPT expert."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["one_class", "few_shot"] = "few_shot"
    backbone: str = Field(
        IMAGEBIND,
        description="'imagebind' (ImageBind-Huge vision tower, as AnomalyGPT); few_shot also takes "
        "'efficientnet_lite0' (embedded) or another timm CNN (with `backbone_weights`)",
    )
    imagebind_weights: str | None = Field(None, description="local imagebind_huge.pth (vision + text towers)")
    decoder_weights: str | None = Field(
        None, description="local AnomalyGPT pytorch_model.pt holding image_decoder.* (one_class)"
    )
    text_features: str | None = Field(
        None,
        description="optional safetensors of precomputed prompt features (class name -> 2 x embed_dim); "
        "without it the ImageBind text tower encodes the prompts",
    )
    class_name: str | None = Field(None, description="product name for the prompts; None: 'object' (with a warning)")
    layers: list[int] | None = Field(
        None, description="ImageBind: 1-indexed blocks (default 8/16/24/32); CNN: stage indices (default 2, 3)"
    )
    image_size: int | None = Field(None, ge=16, le=2048, description="None: 224 (ImageBind's size) for every backbone")
    backbone_weights: str | None = Field(None, description="local weights of a timm CNN other than the embedded one")
    rotate_references: bool = Field(
        False, description="few_shot: also store the references rotated by 90/180/270 degrees (AnomalyGPT's option)"
    )
    architecture: ImageBindArchitecture = Field(default_factory=ImageBindArchitecture)
    device: str = Field("cpu", description="torch device, e.g. 'cpu' or 'cuda:0'")

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[int] | None) -> list[int] | None:
        return check_layer_indices(value)


@hookimpl
def register_experts(register):  # type: ignore[no-untyped-def]
    register(
        "anomalygpt",
        factory="myriad_experts_anomalygpt.expert:AnomalyGPTExpert",
        config=AnomalyGPTConfig,
        modes=["few_shot", "one_class"],
        description="AnomalyGPT's expert: ImageBind patch decoder vs prompts (one_class) or patch memory (few_shot).",
    )
