"""Options shared by several ``myriad`` sub-commands (one definition each)."""

from __future__ import annotations

import click

from myriad.inspection import PRECISIONS

#: ``--precision``: the LMM's inference precision (``inspect``, ``eval``, ``serve``).
precision_option = click.option(
    "--precision",
    type=click.Choice(list(PRECISIONS)),
    default="float32",
    show_default=True,
    help="LMM inference precision: int8 quantises the LLM's linear layers (CPU, ~2x faster).",
)
