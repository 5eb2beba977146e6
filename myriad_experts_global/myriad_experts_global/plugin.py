"""Registers the ``global`` expert. Only cheap imports here: discovery must stay instant.

Every setting is documented in the model card (README.md, "Config reference").
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from myriad.api import hookimpl


class GlobalStatsConfig(BaseModel):
    """Settings of the texture-wide expert (defaults: embedded EfficientNet-Lite0, stages 1-4, 256 px)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["one_class", "few_shot"] = Field(
        "one_class", description="one_class: a training set of normals; few_shot: k reference images"
    )
    backbone: str = Field(
        "efficientnet_lite0",
        description="embedded 'efficientnet_lite0/1/2', or any timm CNN name with `weights`",
    )
    weights: Optional[str] = Field(None, description="local weights file (.safetensors/.pth) for a non-embedded backbone")
    layers: list[int] = Field([1, 2, 3, 4], description="timm out_indices of the stages whose statistics are pooled")
    image_size: int = Field(256, ge=32, le=2048, description="images are resized to image_size x image_size")
    window: Optional[float] = Field(
        None, gt=0.0, le=1.0,
        description="statistics are pooled over windows of this fraction of the image side (1 = the whole image); "
        "None = 1 for one_class, 0.5 for few_shot (more samples from few references)",
    )
    window_stride: float = Field(0.25, gt=0.0, le=1.0, description="step between windows, fraction of the image side")
    groups: list[Literal["cnn", "energy", "spectrum"]] = Field(
        ["cnn", "energy"], min_length=1,
        description="statistic groups: 'cnn' (backbone channel mean/std per stage), 'energy' (native-resolution "
        "texture energy: noise, sharpness, grain, orientation), 'spectrum' (native-resolution power spectrum: shares "
        "per frequency ring and orientation sector)",
    )
    null_folds: int = Field(5, ge=2, le=20, description="image folds for the held-out distances that standardise each group")
    shrinkage: Optional[float] = Field(
        None, ge=0.0, le=1.0, description="covariance shrinkage towards a scaled identity; None = Ledoit-Wolf estimate"
    )
    batch_size: int = Field(8, ge=1, le=1024, description="images per backbone forward")
    feature_cache_mb: int = Field(
        64, ge=0, le=65536,
        description="MiB of fitted images' window statistics kept for a few minutes, so the calibration folds and the "
        "final fit compute them once per image instead of once per fold (0 = off); same scores up to float rounding",
    )
    runtime: Literal["auto", "torch", "openvino", "onnxruntime"] = Field(
        "auto",
        description="what runs the frozen backbone on the CPU: auto (OpenVINO if installed, else ONNX Runtime if "
        "installed, else torch), or one of them; checked against torch before use (myriad.backbone_runtime)",
    )
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'")
    num_threads: Optional[int] = Field(None, ge=1, description="CPU threads for torch (None = leave as is)")

    @field_validator("groups")
    @classmethod
    def _check_groups(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"groups must not repeat, got {value}")
        return list(value)

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, value: list[int]) -> list[int]:
        if not 1 <= len(value) <= 5 or any(i < 0 for i in value) or list(value) != sorted(set(value)):
            raise ValueError(f"layers needs 1 to 5 distinct, increasing, non-negative stage indices, got {value}")
        return list(value)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not (value.startswith("cuda:") and value[5:].isdigit()):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")
        return value


@hookimpl
def register_experts(register):  # type: ignore[no-untyped-def]
    register(
        "global",
        factory="myriad_experts_global.expert:GlobalStatsExpert",
        config=GlobalStatsConfig,
        modes=["one_class", "few_shot"],
        description="Texture-wide: Mahalanobis distance of pooled CNN feature statistics to the normals' (image-level map).",
    )
