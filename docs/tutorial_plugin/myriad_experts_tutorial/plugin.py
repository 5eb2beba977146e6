"""Registers the ``colour-stats`` expert. Only cheap imports here: discovery must stay instant."""

from typing import Literal

from pydantic import BaseModel, Field

from myriad.api import hookimpl


class ColourStatsConfig(BaseModel):
    """Settings of the colour-stats expert."""

    mode: Literal["few_shot", "one_class"] = "few_shot"
    size: int = Field(64, ge=8, le=1024, description="images are compared at size x size")
    blur: float = Field(2.0, ge=0, description="Gaussian blur (pixels at `size`) before comparing")


@hookimpl
def register_experts(register):
    register(
        "colour-stats",
        factory="myriad_experts_tutorial.expert:ColourStatsExpert",
        config=ColourStatsConfig,
        modes=["few_shot", "one_class"],
        description="Per-pixel z-score of blurred colour against normal images (tutorial).",
    )
