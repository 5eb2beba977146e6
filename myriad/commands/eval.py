"""``myriad eval``: score an expert on an MVTec-AD-layout dataset and write a report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from myriad.commands.options import calibration_option, false_alarm_rate_option, precision_option, tile_option, verdict_option
from myriad.defaults import DEFAULT_EXPERT
from myriad.inspection import DEFAULT_PRECISION


def parse_config(value: str | None) -> dict[str, Any]:
    """``--config``: a JSON object, or the path of a JSON file holding one."""
    import json

    from myriad.errors import ConfigError

    if value is None or not value.strip():
        return {}
    text = value.strip()
    source = "--config"
    if not text.startswith("{"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"--config {value!r}: neither a JSON object nor an existing file")
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object of expert settings, got {type(data).__name__}")
    return data


def _names(values: tuple[str, ...]) -> tuple[str, ...] | None:
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return tuple(dict.fromkeys(names)) or None


@click.command("eval")
@click.option("--expert", "-e", default=DEFAULT_EXPERT, show_default=True,
              help="Expert name (see `myriad experts`), or several fused with '+'.")
@click.option("--data", "-d", "data", required=True, type=click.Path(path_type=Path),
              help="MVTec-AD-layout root (<category>/train/good, test/<defect>, ground_truth/<defect>).")
@click.option("--category", "-c", "categories", multiple=True, metavar="NAME",
              help="Category to evaluate (repeat or comma-separate). [default: all found]")
@click.option("--k-shot", "-k", type=click.IntRange(1), default=None,
              help="Few-shot: fit on K images drawn from train/good. [default: one-class, all of train/good]")
@click.option("--config", "config", default=None, metavar="JSON|FILE", help="Expert settings: a JSON object or a JSON file.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.json"),
              show_default=True, help="Report JSON; the .md, predictions JSONL and a plots folder go beside it.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Passed to experts whose config has a `device` field.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the k-shot draw and calibration folds.")
@click.option("--runs", type=click.IntRange(1), default=1, show_default=True,
              help="Repeat with seeds seed, seed+1, ... and average (few-shot draws).")
@click.option("--batch-size", "-b", type=click.IntRange(1), default=None,
              help="Test images per predict call.  [default: 8; a transductive zero-shot expert (musc) gets a "
              "category's whole test split, so every image is scored against the same others]")
@click.option("--folds", type=click.IntRange(2), default=3, show_default=True, help="k of the k-fold calibration.")
@click.option("--controls", type=click.IntRange(0), default=None,
              help="Transductive zero-shot experts: control normals added to each test batch for in-batch "
              "calibration (default 16; 0 = fixed calibration).")
@click.option("--metric-size", type=click.IntRange(0), default=256, show_default=True,
              help="Pixel metrics on maps/masks shrunk to this longer side (0 = native resolution).")
@click.option("--examples", type=click.IntRange(0), default=6, show_default=True, help="Rows of the overlay grid per category.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary table.")
@click.option("--lmm", default=None, metavar="mini|FILE",
              help="Also evaluate Myriad's text answers: 'mini' (shipped weights) or a trained weights file.")
@click.option("--ask", default=None, help="Instruction for --lmm instead of the default question.")
@verdict_option
@precision_option
@false_alarm_rate_option
@calibration_option
@tile_option
def eval_command(
    expert: str,
    data: Path,
    categories: tuple[str, ...],
    k_shot: int | None,
    config: str | None,
    output: Path,
    device: str | None,
    seed: int,
    runs: int,
    batch_size: int | None,
    folds: int,
    metric_size: int,
    examples: int,
    no_plots: bool,
    quiet: bool,
    lmm: str | None = None,
    ask: str | None = None,
    precision: str = DEFAULT_PRECISION,
    controls: int | None = None,
    false_alarm_rate: float | None = None,
    calibration: str = "auto",
    tile: int | str | None = "auto",
    verdict: str = "either",
) -> None:
    """Evaluate an expert: image/pixel AUROC, AUPRO, F1-max and accuracy at the calibrated threshold.

    One-class by default (fit on every train/good image); with --k-shot K, few-shot on K
    drawn images, averaged over --runs draws. The report (JSON + Markdown + plots) is
    written only when the whole evaluation has finished.

    Example: `myriad eval --expert patchcore --data data/mvtec --category bottle --k-shot 1 --runs 5`
    """
    from myriad.evaluation.report import output_paths, write_outputs
    from myriad.evaluation.runner import EvalSettings, evaluate

    output_paths(output)  # refuse a bad --output before working for minutes
    settings = EvalSettings(
        expert=expert,
        data=data,
        categories=_names(categories),
        k_shot=k_shot,
        config=parse_config(config),
        device=device,
        seed=seed,
        runs=runs,
        batch_size=batch_size,
        folds=folds,
        controls=controls,
        metric_size=metric_size,
        examples=examples,
        false_alarm_rate=false_alarm_rate,
        calibration=calibration,
        tile=tile,
        progress=not quiet,
    )

    def warn(message: str) -> None:
        click.echo(f"warning: {message}", err=True)

    steps = []
    if lmm is not None:
        from myriad.evaluation.lmm_step import LMMStep
        from myriad.inspection import load_lmm

        steps.append(LMMStep(
            load_lmm(lmm, device or "cpu", precision), instruction=ask, device=device or "cpu", verdict_rule=verdict,
            false_alarm_rate=false_alarm_rate,
        ))
    result = evaluate(settings, steps=steps, warn=warn)
    report = write_outputs(result, output, plots=not no_plots)
    if not quiet:
        from myriad.evaluation.report import markdown

        table = [line for line in markdown(report).splitlines() if line.startswith("|")]
        click.echo("\n".join(table))
    paths = output_paths(output)
    written = [paths["json"], paths["markdown"], paths["predictions"]] + ([paths["plots"]] if not no_plots else [])
    click.echo("wrote " + ", ".join(str(p) for p in written))
