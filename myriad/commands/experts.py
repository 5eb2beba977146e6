"""``myriad experts``: list installed expert plugins, and (once, on stderr) the plugins that failed."""

from __future__ import annotations

import json

import click


@click.command("experts")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
def experts_command(as_json: bool) -> None:
    """List installed experts: name, modes, distribution, version, description.

    Plugins that failed to load or register are listed on stderr, one line each; the others are listed as usual.
    """
    from myriad.plugins import list_experts, plugin_errors

    experts = list_experts()
    for error in plugin_errors():
        click.echo(f"warning: {error}", err=True)
    if as_json:
        click.echo(json.dumps([info.as_dict() for info in experts], indent=2))
        return
    if not experts:
        click.echo("No experts installed. Install one, e.g.: pip install ./myriad_experts_patchcore")
        return
    rows = [
        (info.name, ",".join(m.value for m in info.modes), f"{info.distribution} {info.version or ''}".strip(), info.description)
        for info in experts
    ]
    widths = [max(len(r[i]) for r in rows + [("name", "modes", "distribution", "")]) for i in range(3)]
    click.echo(f"{'name':<{widths[0]}}  {'modes':<{widths[1]}}  {'distribution':<{widths[2]}}  description")
    for row in rows:
        click.echo(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
