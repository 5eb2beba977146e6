"""Registers the ``patchcore`` expert. Only cheap imports here: discovery must stay instant.

Every setting is documented in the model card (README.md, "Config reference").
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from myriad.api import hookimpl


class PatchCoreConfig(BaseModel):
    """Settings of the PatchCore expert (defaults: embedded EfficientNet-Lite0 stages 2+3, input 512 px, coreset 2.5 %)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["one_class", "few_shot"] = Field(
        "one_class", description="one_class: bank from a training set; few_shot: bank from k reference images"
    )
    # -- features -------------------------------------------------------------------
    backbone: str = Field(
        "efficientnet_lite0", description="embedded 'efficientnet_lite0', or any timm CNN name with `weights`"
    )
    weights: Optional[str] = Field(None, description="local weights file (.safetensors/.pth) for a non-embedded backbone")
    layers: Optional[list[int]] = Field(
        None, description="timm out_indices of the stages used (shallowest first); None = the backbone's default"
    )
    image_size: int = Field(
        512, ge=32, le=2048,
        description="images (or 256 px tiles) are resized to image_size x image_size; 512 (the default) lets the "
        "stride-8 features see 4 px detail of a 256 px image; 256 is about 4x cheaper and misses more small defects",
    )
    backbone_precision: Literal["float32", "bfloat16", "auto"] = Field(
        "float32",
        description="precision of the backbone's forward pass: bfloat16 is ~1.4x faster on CPUs that compute it "
        "natively (AVX512-BF16 / AMX) and slower elsewhere; auto = bfloat16 where native, else float32",
    )
    aggregation: Literal["concat", "pool"] = Field(
        "concat", description="concat stage channels (anomalib) or adaptive-pool them to embed_dim (original)"
    )
    embed_dim: int = Field(1024, ge=8, le=8192, description="feature size for aggregation='pool'")
    # -- memory bank ----------------------------------------------------------------
    coreset_ratio: Optional[float] = Field(
        None, gt=0.0, le=1.0, description="fraction of patches kept; None = 0.025 (one_class) / 1.0 (few_shot)"
    )
    max_bank_size: Optional[int] = Field(None, ge=1, description="upper bound on the bank size (patches)")
    projection_dim: int = Field(128, ge=0, description="random projection size for coreset selection (0 = none)")
    coreset_group_size: Optional[int] = Field(
        100_000, ge=1_000, description="patches per greedy selection; larger sets are reduced in groups (None = global)"
    )
    bank_dtype: Literal["float32", "float16"] = Field("float32", description="precision of the stored bank")
    index: Literal["flat", "ivfpq"] = Field("flat", description="exact flat search or approximate IVF-PQ")
    ivf_lists: int = Field(1024, ge=1, description="IVF-PQ: number of inverted lists")
    pq_subquantizers: int = Field(64, ge=1, description="IVF-PQ: PQ sub-quantizers (rounded to a divisor of D)")
    ivf_probe: int = Field(16, ge=1, description="IVF-PQ: lists visited per query")
    runtime: Literal["auto", "torch", "openvino", "onnxruntime"] = Field(
        "auto",
        description="what runs the frozen backbone on the CPU: auto (OpenVINO if installed, else ONNX Runtime if "
        "installed, else torch), or one of them; the export is cached and checked against torch before use "
        "(myriad.backbone_runtime); not part of the fitted state",
    )
    search: Literal["exact", "certified"] = Field(
        "certified",
        description="exact: every patch searched exactly (FAISS flat); certified: an IVF index bounds every patch's "
        "distance from above and only the patches that can hold the image score (the largest smoothed patch score) "
        "are searched exactly, so image scores equal the exact ones; the map may read higher where patches were only "
        "bounded (findings' extents too); flat index on the CPU only, with one neighbour and no reweighting",
    )
    heldout_search: Literal["exact", "bounded"] = Field(
        "exact",
        description="how the fit scores each normal without its own patches (the position baseline and the "
        "calibration's held-out scores): exact (FAISS flat); bounded (opt-in): upper bounds from an IVF index for "
        "the baseline, then every held-out image score certified exact against that baseline, as search='certified' "
        "does (one neighbour; a flat float32 bank on the CPU, else exact). Bounded fits faster but its baseline and "
        "held-out maps differ slightly: Myriad's verdicts changed on 2.1 % of the visible fundus images",
    )
    certify_probed_share: float = Field(
        1 / 32, gt=0.0, le=1.0,
        description="search='certified': share of the IVF lists probed for the bounds (more: tighter bounds, so "
        "maps closer to the exact ones and fewer exact searches, at more IVF work)",
    )
    certify_level: Optional[float] = Field(
        None,
        description="certified search with a position baseline: every patch whose smoothed bound reads at or above "
        "this many deviations of the normal patches at its position is searched exactly too, so the map is exact "
        "wherever it reads at least this level and below it elsewhere; None: only the image score is exact",
    )
    # -- scoring --------------------------------------------------------------------
    num_neighbors: int = Field(1, ge=1, le=1024, description="patch score = mean distance to this many bank neighbours")
    distance: Literal["squared", "euclidean"] = Field(
        "squared", description="squared L2 as FAISS returns it (original) or its square root (anomalib)"
    )
    reweight: bool = Field(False, description="paper's image-score reweighting by the bank density near the worst patch")
    reweight_neighbors: int = Field(9, ge=2, le=1024, description="b: bank neighbours used by the reweighting")
    blur_sigma: float = Field(4.0, ge=0.0, le=64.0, description="Gaussian blur of the map, pixels at image_size")
    score_sigma: Optional[float] = Field(
        None, ge=0.0, le=16.0,
        description="the image score is the maximum of the patch scores smoothed by a Gaussian of this sigma, in grid "
        "cells (a defect raises a cluster of patches, a normal image's highest patch is often alone); 0 = the raw "
        "maximum (the paper and the authors' code); None = 1 where the position baseline is in use (its z-scores), "
        "else 0. States saved before it was recorded load with 0",
    )
    position_baseline: Literal["auto", "robust-z", "none"] = Field(
        "auto",
        description="compare each patch score with the normal images' held-out scores at its grid position "
        "((score - median) / deviation; removes the border's higher scores); auto = robust-z in one_class mode "
        "with at least 20 normal images and reweight off, none otherwise",
    )
    # -- few-shot -------------------------------------------------------------------
    k_shot: Optional[int] = Field(None, ge=1, description="few_shot: references used (fit needs at least this many)")
    augment: Literal["none", "flip", "rotate", "flip_rotate"] = Field(
        "none", description="few_shot: add flipped / rotated copies of the references to the bank"
    )
    # -- runtime --------------------------------------------------------------------
    batch_size: int = Field(8, ge=1, le=1024, description="images per backbone forward and per FAISS search")
    feature_cache_mb: int = Field(
        1024, ge=0, le=65536,
        description="MiB of fitted images' features kept for a few minutes, so the calibration folds and the final fit "
        "run the backbone once per image instead of once per fold (0 = off)",
    )
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'")
    num_threads: Optional[int] = Field(None, ge=1, description="CPU threads for torch and faiss (None = leave as is)")
    seed: int = Field(0, description="seed of the coreset projection and start point")
    progress: bool = Field(
        True, description="report fitting progress: tqdm bars (shown only on a terminal), or the host's progress callback"
    )

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, value: Optional[list[int]]) -> Optional[list[int]]:
        if value is None:
            return value
        if not 1 <= len(value) <= 4:
            raise ValueError(f"layers needs 1 to 4 stage indices, got {value}")
        if any(i < 0 for i in value) or list(value) != sorted(set(value)):
            raise ValueError(f"layers must be distinct, increasing, non-negative stage indices, got {value}")
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
        "patchcore",
        factory="myriad_experts_patchcore.expert:PatchCoreExpert",
        config=PatchCoreConfig,
        modes=["one_class", "few_shot"],
        description="PatchCore: CNN patch features vs a coreset memory bank of normal patches (FAISS kNN).",
    )
