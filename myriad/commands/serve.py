"""``myriad serve``: the REST API and the web page (FastAPI + Gradio, run by uvicorn)."""

from __future__ import annotations

from pathlib import Path

import click

from myriad.commands.options import precision_option


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0 for every one).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--expert", default="patchcore", show_default=True, help="Default expert of new profiles (see `myriad experts`).")
@click.option("--lmm", default="mini", show_default=True, help="'mini' (shipped weights), a weights file, or 'none' (expert only).")
@click.option("--device", default="cpu", show_default=True, help="Torch device of the LMM and the experts.")
@precision_option
@click.option("--data-root", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Allow fitting profiles from server-side folders under this directory (off by default).")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.001), default=20.0, show_default=True, help="Largest uploaded file, in MiB.")
@click.option("--max-files", type=click.IntRange(1), default=64, show_default=True, help="Most normal images per profile.")
@click.option("--max-side", type=click.IntRange(8), default=4096, show_default=True, help="Largest image side, in pixels.")
@click.option("--max-pixels", type=click.IntRange(64), default=4096 * 4096, show_default=True, help="Largest image area, in pixels.")
@click.option("--max-profiles", type=click.IntRange(1), default=32, show_default=True, help="Profiles kept in memory (least recently used dropped).")
@click.option("--max-sessions", type=click.IntRange(1), default=128, show_default=True, help="Inspected images (with their chats) kept in memory.")
@click.option("--no-ui", is_flag=True, help="Serve the REST API only, without the web page.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info", show_default=True)
def serve_command(
    host: str,
    port: int,
    expert: str,
    lmm: str,
    device: str,
    precision: str,
    data_root: Path | None,
    max_upload_mb: float,
    max_files: int,
    max_side: int,
    max_pixels: int,
    max_profiles: int,
    max_sessions: int,
    no_ui: bool,
    log_level: str,
) -> None:
    """Serve the inspection API at /api (schema at /docs) and the web page at /ui.

    The LMM is loaded once at start-up and shared by every profile and request.
    """
    try:
        import uvicorn

        from myriad.serve.app import create_app
    except ImportError as exc:
        raise click.ClickException(f"`myriad serve` needs the serve extra ({exc.name} is missing): pip install 'myriad[serve]'") from exc
    from myriad.errors import WeightsError
    from myriad.plugins import get_expert_info
    from myriad.serve.limits import Limits

    get_expert_info(expert)  # an unknown default expert is a start-up error naming the installed ones
    limits = Limits(
        max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_files=max_files, max_side=max_side, max_pixels=max_pixels
    )
    click.echo(f"loading the LMM ({lmm}) ...", err=True)
    try:
        app = create_app(
            lmm=lmm, expert=expert, device=device, precision=precision, limits=limits, data_root=data_root,
            max_profiles=max_profiles, max_sessions=max_sessions, ui=not no_ui,
        )
    except WeightsError as exc:
        raise click.ClickException(
            f"{exc}\nStart with `--lmm none` for expert-only answers, or `--lmm PATH` for trained weights."
        ) from exc
    click.echo(f"Myriad at http://{host}:{port}/ (page /ui, API /api, schema /docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
