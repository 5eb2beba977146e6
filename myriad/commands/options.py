"""Options shared by several ``myriad`` sub-commands (one definition each)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from myriad.inspection import ANSWER_ROUTES, DEFAULT_ANSWER_ROUTE, DEFAULT_PRECISION, PRECISIONS
from myriad.verdict import DEFAULT_VERDICT_RULE, VERDICT_RULES

#: ``--precision``: the LMM's inference precision (``inspect``, ``eval``, ``serve``).
precision_option = click.option(
    "--precision",
    type=click.Choice(list(PRECISIONS)),
    default=DEFAULT_PRECISION,
    show_default=True,
    help="LMM inference precision: auto = bfloat16 LLM where the hardware computes bf16 (e.g. AVX512-BF16 CPUs), "
    "else float32; int8 quantises the LLM's linear layers (CPU only; with the shipped weights its verdicts fall "
    "below the expert's, so use it only to measure).",
)


#: ``--answers``: how text answers are made (``inspect``, ``serve``; see ``docs/findings.md``, "Answer routes").
answers_option = click.option(
    "--answers",
    type=click.Choice(list(ANSWER_ROUTES)),
    default=DEFAULT_ANSWER_ROUTE,
    show_default=True,
    help="facts: the LMM answers the question it was trained on, which gives the verdict (see --verdict), and the answer states the map's "
    "measured facts for the question asked; follow-ups likewise, consistent with it. lmm: the LMM's own text "
    "(the paper's route; follow-ups continue its conversation).",
)


verdict_option = click.option(
    "--verdict",
    type=click.Choice(list(VERDICT_RULES)),
    default=DEFAULT_VERDICT_RULE,
    show_default=True,
    help="How the verdict is decided: either = the expert's alarm, or the LMM's Yes where it is more confident than "
    "on every normal image it was calibrated on (it never overrules an alarm); lmm = the LMM's answer as it is "
    "(the paper's, uncalibrated); expert = the expert's decision.",
)


def _false_alarm_rate(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    from myriad.calibration import check_false_alarm_rate
    from myriad.errors import ConfigError

    try:
        return check_false_alarm_rate(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from exc


#: ``--false-alarm-rate``: calibrate at a target rate instead of the paper's maximum (``inspect``, ``eval``, ``serve``).
false_alarm_rate_option = click.option(
    "--false-alarm-rate",
    type=float,
    default=None,
    callback=_false_alarm_rate,
    metavar="RATE",
    help="Threshold at this false-alarm rate on held-out normals (e.g. 0.01; a tail fit) instead of the paper's "
    "maximum held-out normal (the default). A fused expert decides at the rate on its fused statistic.",
)


#: ``--calibration``: how fitted experts' held-out normals are scored (``inspect``, ``eval``).
calibration_option = click.option(
    "--calibration",
    type=click.Choice(["auto", "leave-one-out", "kfold"]),  # myriad.calibration.CALIBRATION_METHODS
    default="auto",
    show_default=True,
    help="How held-out normals that set the threshold are scored: leave-one-out = each normal against everything "
    "fitted but itself, as test images are scored; kfold = 3 folds each fitted on two thirds (the authors' rule, "
    "thresholds too high); auto = leave-one-out where the expert offers it, else kfold.",
)


def _tile(ctx: click.Context, param: click.Parameter, value: str) -> int | str | None:
    if value in ("auto", "none"):
        return value
    try:
        side = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give 'auto', 'none' or a tile side in pixels") from None
    if side < 32:
        raise click.BadParameter(f"{value!r}: a tile side must be at least 32 pixels")
    return side


#: ``--tile``: native-resolution scoring of large images in overlapping tiles (``inspect``, ``eval``).
tile_option = click.option(
    "--tile",
    default="auto",
    show_default=True,
    callback=_tile,
    metavar="auto|none|PIXELS",
    help="Score large images in overlapping tiles at native resolution: auto = 256 px tiles when the shorter side "
    "exceeds 384 px; none = let the expert resize whole images; or a tile side in pixels.",
)


#: ``--rules``: a line's acceptance rules applied after the verdict (``inspect``, ``fit``; :mod:`myriad.acceptance`).
rules_option = click.option(
    "--rules",
    "rules_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Acceptance rules (TOML): ignore areas, a minimum defect area, a severity floor, a review band, accepted "
    "kinds; applied after the verdict. With fit, saved in the profile; with inspect, they replace the profile's.",
)


def load_rules_option(rules_file: "Path | None") -> "Any":
    """The rules of ``--rules`` (None without), their warnings printed to stderr."""
    if rules_file is None:
        return None
    from myriad.acceptance import load_rules

    rules = load_rules(rules_file)
    for warning in rules.warnings():
        click.echo(f"warning: {warning}", err=True)
    return rules
