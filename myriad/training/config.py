"""Training configuration (pydantic), read from a JSON or TOML file by ``myriad train --config``.

Two schedules are expressible:

- the published code (default): one phase, lr 1e-4 with per-step cosine to 0, each
  step picking TPG-only / VPG+TPG / VPG-only at random;
- the paper: phase 1 trains the VE-guided encoder (VPG path) and the TPG separately,
  phase 2 fine-tunes jointly at a lower learning rate (3e-5 -> 1e-5). See
  :func:`paper_schedule`.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from myriad.errors import ConfigError

Route = Literal["tpg", "vpg_tpg", "vpg"]


class Phase(BaseModel):
    """A run of steps with one learning-rate schedule and one mix of module routes."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(gt=0)
    lr: float = Field(1e-4, gt=0)
    min_lr: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    #: probability of each route per step: TPG only, VPG + TPG, VPG only
    routes: dict[Route, float] = Field(default_factory=lambda: {"tpg": 1 / 3, "vpg_tpg": 1 / 3, "vpg": 1 / 3})
    #: the parts trained in this phase (e.g. ["tpg"] for the paper's separate TPG stage);
    #: ``None``: every trainable part of the model. The others stay frozen for the phase.
    parts: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> "Phase":
        if not self.routes or any(p < 0 for p in self.routes.values()) or sum(self.routes.values()) <= 0:
            raise ValueError("routes must hold non-negative probabilities with a positive sum")
        if self.parts is not None:
            from myriad.lmm.parts import PART_NAMES

            unknown = sorted(set(self.parts) - set(PART_NAMES))
            if unknown or not self.parts:
                raise ValueError(f"parts must name some of {list(PART_NAMES)}; unknown: {unknown}")
        return self


class DataConfig(BaseModel):
    """Where training images come from (never the data evaluated on)."""

    model_config = ConfigDict(extra="forbid")

    #: texture sources of :mod:`myriad.synthetic.textures`, one category each
    textures: list[str] = Field(default_factory=list)
    #: extra folders of normal images, one category each (the folder name is the category)
    folders: list[Path] = Field(default_factory=list)
    #: real photos of the realistic preset that are reserved for training (``TRAIN_PHOTOS`` of
    #: :mod:`myriad.synthetic.realistic_photos`: "moon", "stars"), one category each, added to the others:
    #: native-resolution crops with a production line's variation; their painted anomalies are the
    #: realistic *training* kinds (never the evaluation kinds or photos)
    photos: list[str] = Field(default_factory=list)
    #: normal training images per category (synthetic anomalies are made from these)
    images_per_category: int = Field(64, ge=2)
    #: normal references per category given to a few-shot expert (held apart from the images)
    reference_shots: int = Field(4, ge=1)
    image_size: int = Field(256, ge=32)
    #: "nsa" (Poisson-blended patches, the reference) or "cutpaste"
    synthesis: Literal["nsa", "cutpaste"] = "nsa"
    #: share of the anomalous items painted with one of the visible preset's *local training* kinds
    #: (blotch, colour patch, smear, chip: small, 0.1-3 % of the image, at least ``medium`` visibility) on
    #: any category: the small true alarms an LMM must learn to confirm (0: none, the recipes up to v5)
    visible_fraction: float = Field(0.0, ge=0.0, le=1.0)

    @field_validator("photos")
    @classmethod
    def _check_photos(cls, value: list[str]) -> list[str]:
        from myriad.synthetic.realistic_photos import PHOTOS, TRAIN_PHOTOS

        for name in value:
            if name not in PHOTOS:
                raise ValueError(f"unknown photo {name!r}; training photos: {', '.join(TRAIN_PHOTOS)}")
            if name not in TRAIN_PHOTOS:
                raise ValueError(f"photo {name!r} belongs to the realistic dev set (evaluation); training photos: "
                                 f"{', '.join(TRAIN_PHOTOS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"photos listed twice: {value}")
        return list(value)


class MapSource(BaseModel):
    """One way of making the training maps: an expert setting and how many references it sees.

    Several sources teach the LMM maps from experts of different strength (1-shot maps of
    normal images carry more sub-threshold blobs than 4-shot or one-class ones), so it does
    not learn one expert's false-alarm pattern. Each training pair draws a source at random.
    """

    model_config = ConfigDict(extra="forbid")

    #: the expert of this source (one name or a fusion such as ``"patchcore+global"``); None: the top-level ``expert``
    expert: str | None = None
    #: changes to the top-level ``expert_config`` (e.g. ``{mode = "one_class"}``); with an ``expert`` of its own
    #: that differs from the top-level one, the whole config of that expert
    expert_config: dict = Field(default_factory=dict)
    #: the expert fits on the first ``shots`` held-apart references; None: all ``data.reference_shots``
    shots: int | None = Field(None, ge=1)
    #: relative frequency among training pairs
    weight: float = Field(1.0, gt=0)


class TrainConfig(BaseModel):
    """Everything ``myriad train`` needs."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["mini", "tiny"] = "mini"
    #: changes to the preset's MyriadConfig (e.g. {"template": "chat"})
    model: dict = Field(default_factory=dict)
    #: initial trainable weights (a checkpoint of ours) to start from
    init_from: Path | None = None
    expert: str = "patchcore"
    expert_config: dict = Field(default_factory=lambda: {"mode": "few_shot"})
    data: DataConfig = Field(default_factory=DataConfig)
    phases: list[Phase] = Field(default_factory=lambda: [Phase(steps=1000)])
    #: normal images per step; as many synthetic anomalous images are added (half/half batches)
    batch_size: int = Field(2, ge=1)
    grad_accum: int = Field(1, ge=1)
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0
    #: weight of each answer's first token (the Yes/No) in the loss; 1.0 = the published plain mean
    decision_weight: float = Field(1.0, gt=0)
    #: several ways of making maps, one drawn per training pair; empty: ``expert_config`` with all references
    map_sources: list[MapSource] = Field(default_factory=list)
    #: share of training pairs asked "Where is the defect in the image?" (answered from the anomaly's mask,
    #: :mod:`myriad.training.answers`) instead of the paper's question; 0 = the paper's question only
    location_fraction: float = Field(0.0, ge=0.0, le=1.0)
    #: synthetic anomalies the pair's expert map does not show (calibrated map below ``unseen_below`` everywhere):
    #: "yes" trains them on the mask's truth (the paper, versions 1-4), "skip" leaves them out of the loss, so the
    #: LMM is never taught to answer Yes over a map that shows nothing (the Yes bias of the v4 candidate)
    unseen_anomalies: Literal["yes", "skip"] = "yes"
    #: normal items whose expert map flags them (calibrated map at or above ``unseen_below`` somewhere): "no"
    #: trains them as normal (the paper), "skip" leaves them out too, so every trained pair agrees with its map
    alarmed_normals: Literal["no", "skip"] = "no"
    #: the calibrated map maximum below which a synthetic anomaly counts as unseen, and at or above which a normal
    #: item counts as alarmed (0.5: the expert's threshold)
    unseen_below: float = Field(0.5, gt=0.0, le=1.0)
    #: expert maps: "cache" (computed once, saved as safetensors keyed by the expert config) or "online"
    maps: Literal["cache", "online"] = "cache"
    cache_dir: Path | None = None
    output_dir: Path = Path("runs/myriad-mini")
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    seed: int = 42
    amp: bool = True
    device: str = "cpu"
    threads: int | None = None

    @model_validator(mode="after")
    def _check_sources(self) -> "TrainConfig":
        too_many = [s.shots for s in self.map_sources if s.shots is not None and s.shots > self.data.reference_shots]
        if too_many:
            raise ValueError(f"map_sources shots {too_many} exceed data.reference_shots={self.data.reference_shots}")
        return self

    def sources(self) -> list[MapSource]:
        """The map sources, each naming its expert, with the top-level ``expert_config`` merged in where it applies.

        One source if none are configured. A source of another expert than the top-level one keeps its own
        ``expert_config`` alone (the top-level settings belong to the other expert).
        """
        if not self.map_sources:
            return [MapSource(expert=self.expert, expert_config=dict(self.expert_config))]
        out = []
        for source in self.map_sources:
            if source.expert is None or source.expert == self.expert:
                update = {"expert": self.expert, "expert_config": {**self.expert_config, **source.expert_config}}
            else:
                update = {"expert_config": dict(source.expert_config)}
            out.append(source.model_copy(update=update))
        return out

    @property
    def total_steps(self) -> int:
        """Steps over all phases."""
        return sum(p.steps for p in self.phases)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        """Read a JSON or TOML config; errors name the file and the field."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            line = exc.object[: exc.start].count(b"\n") + 1
            bad = exc.object[exc.start : exc.start + 1]
            raise ConfigError(f"{path}: not UTF-8 text (line {line}, byte {exc.start}: {bad!r}); save it as UTF-8") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from exc
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot parse: {exc}") from exc
        try:
            config = cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{path}: invalid training config:\n{exc}") from exc
        base = path.parent
        if not config.output_dir.is_absolute():
            config.output_dir = base / config.output_dir
        if config.cache_dir is not None and not config.cache_dir.is_absolute():
            config.cache_dir = base / config.cache_dir
        config.data.folders = [f if f.is_absolute() else base / f for f in config.data.folders]
        if config.init_from is not None and not config.init_from.is_absolute():
            config.init_from = base / config.init_from
        return config


def reference_schedule(steps: int = 16000) -> list[Phase]:
    """The published code: one phase, lr 1e-4 cosine to 0, random TPG / VPG+TPG / VPG routes."""
    return [Phase(steps=steps)]


def paper_schedule(stage1_steps: int = 32000, stage2_steps: int = 16000) -> list[Phase]:
    """The paper: stage 1 trains encoder (VPG path) and TPG separately, stage 2 jointly at a lower lr."""
    return [
        Phase(steps=stage1_steps, lr=1e-4, routes={"tpg": 0.5, "vpg": 0.5}),
        Phase(steps=stage2_steps, lr=3e-5, min_lr=1e-5, routes={"vpg_tpg": 1.0}),
    ]
