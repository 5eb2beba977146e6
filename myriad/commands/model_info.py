"""``myriad model-info``: parameter counts of the multimodal model, built on the meta device."""

from __future__ import annotations

import json

import click


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


@click.command("model-info")
@click.option("--preset", type=click.Choice(["paper", "mini"]), default="paper", show_default=True, help="Model preset.")
@click.option(
    "--without",
    "without",
    type=click.Choice(["tpg", "vpg", "lorra"]),
    multiple=True,
    help="Ablate a module (paper Table 6); repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def model_info_command(preset: str, without: tuple[str, ...], as_json: bool) -> None:
    """Parameter count of every module (trainable and frozen), without loading or allocating weights."""
    from myriad.lmm.config import preset_config
    from myriad.lmm.info import model_info

    changes = {f"use_{name}": False for name in without}
    info = model_info(preset_config(preset, **changes))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"Myriad preset {info['preset']}: vision {info['vision']}, LLM {info['llm']}")
    width = max(len(p["name"]) for p in info["parts"])
    click.echo(f"{'part':<{width}}  {'params':>14}  {'':>8}  state")
    for p in info["parts"]:
        state = "trainable" if p["trainable"] else ("frozen" if p["built"] else "off")
        click.echo(f"{p['name']:<{width}}  {p['params']:>14,}  {_human(p['params']):>8}  {state}")
    click.echo(f"{'total':<{width}}  {info['total']:>14,}  {_human(info['total']):>8}")
    click.echo(f"{'trainable':<{width}}  {info['trainable']:>14,}  {_human(info['trainable']):>8}")
    click.echo(f"{'frozen':<{width}}  {info['frozen']:>14,}  {_human(info['frozen']):>8}")
    t = info["tokens"]
    click.echo(
        f"tokens: {t['visual_tokens']} visual x {t['visual_token_dim']} -> Q-Former {t['query_tokens']} queries"
        f" + {t['vpg_tokens']} VPG -> LLM {t['image_tokens_to_llm']} image tokens"
        f" (incl. {t['tpg_tokens']} TPG) x {t['llm_hidden']}"
    )
