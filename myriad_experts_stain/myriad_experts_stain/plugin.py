"""Registers the ``stain`` expert. Only cheap imports here: discovery must stay instant.

Every setting is documented in the model card (README.md, "Config reference").
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from myriad.api import hookimpl


class StainConfig(BaseModel):
    """Settings of the soft-stain expert (defaults: native resolution, scales 2/4/8 px, surroundings 16 px)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["one_class", "few_shot"] = Field(
        "one_class", description="one_class: a training set of normals; few_shot: k reference images"
    )
    scales: list[float] = Field(
        [2.0, 4.0, 8.0], min_length=1, max_length=6,
        description="Gaussian sigmas (px at the working resolution) of the local means compared with the normals'",
    )
    context: float = Field(16.0, gt=0.0, le=256.0, description="sigma (px) of the surroundings each local mean is also compared with")
    stride: int = Field(4, ge=1, le=32, description="grid step (px) at which the local statistics are sampled")
    image_size: Optional[int] = Field(
        None, ge=32, le=4096,
        description="None: native resolution (the first fitted image's size, largest side capped at max_side); "
        "an int: every image resized to that square",
    )
    max_side: int = Field(1024, ge=32, le=8192, description="native images with a larger side are scaled down to it")
    bank_size: int = Field(30000, ge=100, le=5_000_000, description="normal grid cells kept as the memory bank (a seeded random draw)")
    position_baseline: bool = Field(
        True, description="z-score each grid position by the held-out normals' distances there (from 20 normal images)"
    )
    score_sigma: float = Field(1.0, ge=0.0, le=8.0, description="Gaussian (grid cells) over the map before its maximum is the image score")
    seed: int = Field(0, description="seed of the memory bank's draw")
    num_threads: Optional[int] = Field(None, ge=1, description="CPU threads for faiss (None = leave as is)")

    @field_validator("scales")
    @classmethod
    def _check_scales(cls, value: list[float]) -> list[float]:
        if any(not 0.0 < s <= 128.0 for s in value) or list(value) != sorted(set(value)):
            raise ValueError(f"scales must be distinct, increasing sigmas in (0, 128] px, got {value}")
        return [float(s) for s in value]

    @model_validator(mode="after")
    def _check_context(self) -> "StainConfig":
        if self.context <= self.scales[-1]:
            raise ValueError(f"context ({self.context} px) must be wider than the largest scale ({self.scales[-1]} px)")
        return self


@hookimpl
def register_experts(register):  # type: ignore[no-untyped-def]
    register(
        "stain",
        factory="myriad_experts_stain.expert:StainExpert",
        config=StainConfig,
        modes=["one_class", "few_shot"],
        description="Soft local changes (stains, blobs, colour patches): low-frequency brightness and colour at native "
        "resolution, nearest normal neighbour.",
    )
