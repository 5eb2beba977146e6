"""``myriad fit``: fit an expert (and calibrate Myriad's verdict) on normal images once, into a profile folder."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from myriad.commands.options import (
    calibration_option,
    false_alarm_rate_option,
    load_rules_option,
    precision_option,
    rules_option,
    tile_option,
    verdict_option,
)
from myriad.defaults import DEFAULT_EXPERT


@click.command("fit")
@click.argument("normal", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="The profile folder to write.")
@click.option("--expert", default=DEFAULT_EXPERT, show_default=True,
              help="Expert plugin (see `myriad experts`), or several fused with '+', e.g. patchcore+global.")
@click.option("--config", "config_json", default=None,
              help='Expert options as JSON (or a JSON file); for a fusion one object per member: {"patchcore": {...}}.')
@click.option("--lmm", default="mini", show_default=True,
              help="The LMM whose verdict is calibrated into the profile: 'mini', a weights file, or 'none' (expert only).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing profile folder (only once the new one is complete).")
@precision_option
@false_alarm_rate_option
@calibration_option
@tile_option
@verdict_option
@rules_option
def fit_command(normal, output, expert, config_json, lmm, device, force, precision, false_alarm_rate, calibration, tile,
                verdict, rules_file) -> None:
    """Fit EXPERT on NORMAL images (files or folders) and write a profile to --output.

    `myriad inspect IMAGES --profile PROFILE` then inspects without refitting; `myriad profile
    show PROFILE` prints what it holds. No limit on the number of normal images.
    """
    from myriad.commands.inspect import _parse_config, _percent, collect_images
    from myriad.inspection import Inspector
    from myriad.profiles import ProfileError, save_profile

    if output.exists() and not force:
        raise ProfileError(f"{output}: already exists (pass --force to replace it)")
    config = _parse_config(config_json)
    rules = load_rules_option(rules_file)
    paths, skipped = collect_images(normal, "NORMAL")
    for path, reason in skipped:
        click.echo(f"warning: skipped {path}: {reason}", err=True)
    if not paths:
        raise click.ClickException(f"no readable normal images in {', '.join(map(str, normal))}")
    inspector = Inspector(expert, config, lmm=lmm, device=device, precision=precision, false_alarm_rate=false_alarm_rate,
                          tile=tile, calibration=calibration, verdict=verdict)
    inspector.fit(paths)
    inspector.set_rules(rules)
    parts = ["myriad", "fit", *map(str, normal), "--expert", expert]
    if config:
        parts += ["--config", json.dumps(config, separators=(",", ":"))]
    if false_alarm_rate is not None:
        parts += ["--false-alarm-rate", str(false_alarm_rate)]
    for flag, value, default in (("--calibration", calibration, "auto"), ("--tile", str(tile), "auto"),
                                 ("--lmm", str(lmm), "mini"), ("--verdict", verdict, "either"),
                                 ("--rules", str(rules_file), "None")):
        if value != default:
            parts += [flag, value]
    parts += ["-o", str(output)]
    saved = save_profile(inspector, output, len(paths), [str(p) for p in normal], command=shlex.join(parts), force=force)
    rate = getattr(inspector.detector, "false_alarm_rate", None)
    line = f"wrote profile {saved}: {expert} fitted on {len(paths)} normal images"
    if rate is not None:
        line += f", expected to flag about {_percent(rate)} of good images"
    verdict_rate = inspector.verdict_false_alarm_rate if inspector.verdict is not None else None
    if verdict_rate is not None and verdict_rate != rate:
        line += f"; Myriad's verdict about {_percent(verdict_rate)}"
    click.echo(line)
