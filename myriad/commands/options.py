"""Options shared by several ``myriad`` sub-commands (one definition each)."""

from __future__ import annotations

import click

from myriad.inspection import DEFAULT_PRECISION, PRECISIONS

#: ``--precision``: the LMM's inference precision (``inspect``, ``eval``, ``serve``).
precision_option = click.option(
    "--precision",
    type=click.Choice(list(PRECISIONS)),
    default=DEFAULT_PRECISION,
    show_default=True,
    help="LMM inference precision: auto = bfloat16 LLM where the hardware computes bf16 (e.g. AVX512-BF16 CPUs), "
    "else float32; int8 quantises the LLM's linear layers (CPU; less accurate).",
)
