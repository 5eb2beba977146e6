"""``myriad profile show``: what a fitted profile holds (checked against its sha256 manifest, nothing loaded)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("profile")
def profile_command() -> None:
    """Fitted profiles written by `myriad fit`."""


@profile_command.command("show")
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print profile.json as it is.")
def show_command(profile: Path, as_json: bool) -> None:
    """Print what PROFILE holds: expert, members and versions, normals, stated false-alarm rates."""
    import json

    from myriad.profiles import describe, read_profile_record

    record = read_profile_record(profile)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    click.echo(f"{profile}: Myriad profile (format {record['format_version']}, every file matches its sha256)")
    for line in describe(record):
        click.echo(f"  {line}")
