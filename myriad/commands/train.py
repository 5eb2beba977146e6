"""``myriad train --config FILE``: train Myriad's trainable parts (multi-GPU through torchrun)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("train")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True, help="Training config (JSON or TOML).")
@click.option("--no-resume", is_flag=True, help="Start from scratch even if checkpoints exist.")
@click.option("--steps", type=int, default=None, help="Stop after this many steps in this call (resume later).")
@click.option("--force", is_flag=True, help="Resume even if the checkpoint was saved under another config.")
def train_command(config_path: Path, no_resume: bool, steps: int | None, force: bool) -> None:
    """Train on normal images + synthetic anomalies with a frozen expert's maps.

    Resumes from the newest checkpoint in OUTPUT_DIR/checkpoints unless --no-resume; a checkpoint
    saved under another config is refused (the error says what differs) unless --force.
    Several GPUs or nodes: torchrun --nproc_per_node N -m myriad train --config FILE
    """
    from myriad.training.config import TrainConfig
    from myriad.training.loop import train

    config = TrainConfig.from_file(config_path)
    result = train(config, resume=not no_resume, stop_after=steps, force=force)
    if result.weights is not None:
        click.echo(f"trained {result.steps} steps in {result.seconds:.0f} s; weights: {result.weights}")
        click.echo(f"loss curve: {config.output_dir / 'loss.png'}")
    else:
        click.echo(f"stopped after step {result.steps} of {config.total_steps}; run again to resume")
