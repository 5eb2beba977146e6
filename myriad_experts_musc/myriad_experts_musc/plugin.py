"""Registers the ``musc`` expert. Only cheap imports here: discovery must stay instant."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from myriad.api import check_layer_indices, hookimpl

#: The embedded ImageNet CNN (ships with Myriad, so MuSc runs without any download).
EMBEDDED_BACKBONE = "efficientnet_lite0"
#: Smallest batch whose per-position statistics are used (``position_baseline``); smaller batches keep raw maps.
POSITION_BASELINE_MIN_IMAGES = 8
#: Reference images per image in mutual scoring (chosen by measurement: README, *Scaling*).
DEFAULT_REFERENCES = 32


class MuScConfig(BaseModel):
    """Settings of the MuSc expert (defaults: the embedded EfficientNet-Lite0, MVTec settings)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["zero_shot"] = "zero_shot"
    backbone: str = Field(
        EMBEDDED_BACKBONE,
        description=(
            "'efficientnet_lite0' (embedded), another timm CNN name (needs `weights`), "
            "'open_clip:<arch>' (e.g. open_clip:ViT-L-14-336) or 'timm:<vit>' (e.g. timm:vit_large_patch14_dinov2)"
        ),
    )
    weights: str | None = Field(None, description="local weights file of the backbone (none for the embedded CNN)")
    image_size: int | None = Field(
        None, ge=16, le=2048, description="square input size; None: 320 for CNNs, 518 for patch-14 ViTs, else native"
    )
    layers: list[int] | None = Field(
        None,
        description="CNN: stage indices (timm out_indices); ViT: 1-indexed blocks. None: (2,) for CNNs (stride 8), "
        "the blocks at 1/4, 1/2, 3/4 and all of the depth for ViTs (6/12/18/24 for ViT-L)",
    )
    r_list: list[int] | None = Field(
        None, min_length=1,
        description="LNAMD aggregation degrees (odd). None: [3] for CNNs (measured), [1, 3, 5] (the paper) for ViTs",
    )
    topmin: float = Field(0.3, gt=0.0, le=1.0, description="fraction of the other images averaged (lowest distances)")
    rscin_k: list[int] | None = Field(
        None,
        description="RsCIN k-list ([1, 2, 3] MVTec, [1, 8, 9] VisA); [] disables. None: [] for CNNs (it lowered "
        "local AUROC with CNN embeddings), [1, 2, 3] (the paper) for ViTs",
    )
    references: int | None = Field(
        DEFAULT_REFERENCES,
        ge=1,
        description="reference images per image in mutual scoring: a seeded random subset of the other images of the "
        "batch (odd values round up to even), so the cost grows as N x references instead of N^2; "
        "None: every other image (the paper's exact all-pairs scoring, also used when references >= N - 1)",
    )
    position_baseline: Literal["robust-z", "median", "none"] = Field(
        "robust-z",
        description="per grid position, compare each image's patch score with the batch at that position: "
        "'robust-z' (default) (score - median) / MAD, 'median' score - median, 'none' the paper's raw scores. "
        "It removes what every image of the batch shares at a position (border and padding effects that "
        f"otherwise set most images' maxima); batches under {POSITION_BASELINE_MIN_IMAGES} images keep raw scores",
    )
    seed: int = Field(0, description="seed of the random reference subsets (same seed and batch: same result)")
    chunk_mb: int = Field(512, ge=1, description="memory of one similarity chunk of the mutual-scoring step (MB)")
    batch_size: int = Field(8, ge=1, description="images per backbone forward pass")
    device: str = Field("cpu", description="torch device, e.g. 'cpu' or 'cuda:0'")
    progress: bool = Field(True, description="report progress: tqdm bars on stderr, or the host's progress callback")
    quick_gelu: bool = Field(True, description="open_clip: QuickGELU activations (True for OpenAI weights)")
    architecture: dict[str, Any] | None = Field(
        None, description="override of the named architecture (open_clip model config or timm kwargs), e.g. for tests"
    )

    @field_validator("r_list")
    @classmethod
    def _odd(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(r < 1 or r % 2 == 0 for r in value):
            raise ValueError(f"r_list must hold odd positive integers, got {value}")
        return value

    @field_validator("rscin_k")
    @classmethod
    def _non_negative(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(k < 0 for k in value):
            raise ValueError(f"rscin_k must hold non-negative integers, got {value}")
        return value

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[int] | None) -> list[int] | None:
        return check_layer_indices(value)


@hookimpl
def register_experts(register):  # type: ignore[no-untyped-def]
    register(
        "musc",
        factory="myriad_experts_musc.expert:MuScExpert",
        config=MuScConfig,
        modes=["zero_shot"],
        description="MuSc: zero-shot maps by mutual scoring of a batch of unlabeled images (transductive, >= 2 images).",
        transductive=True,
    )
