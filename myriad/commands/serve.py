"""``myriad serve``: the REST API and the web page (FastAPI + static page, run by uvicorn)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from myriad.commands.options import answers_option, false_alarm_rate_option, precision_option
from myriad.defaults import DEFAULT_EXPERT

#: The environment variable holding one token (taken whole, spaces and all).
TOKEN_ENV = "MYRIAD_SERVE_TOKEN"
_HOST_HELP = (
    "Interface to listen on. Keep the default loopback address unless other machines must connect: any other "
    "address (e.g. 0.0.0.0, every interface) exposes the server to the network and needs --token."
)


def _read_tokens(given: tuple[str, ...], token_file: Path | None) -> tuple[str, ...]:
    """Every token, each taken whole: one per ``--token``, one per non-empty line of ``--token-file`` (surrounding
    spaces dropped), else ``MYRIAD_SERVE_TOKEN`` as one token. Raises click errors in one line."""
    from myriad.serve.security import check_tokens

    tokens = list(given)
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(f"{token_file}: cannot be read ({exc})", param_hint="--token-file") from None
        tokens += [line.strip() for line in text.splitlines() if line.strip()]
    if not tokens and os.environ.get(TOKEN_ENV, "").strip():
        tokens = [os.environ[TOKEN_ENV].strip()]
    try:
        return check_tokens(dict.fromkeys(tokens))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _expert_config(value: str | None) -> dict[str, dict[str, Any]]:
    """``--expert-config``: a JSON object (or a JSON file) mapping expert (or fusion) names to settings objects."""
    if not value:
        return {}
    text = Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--expert-config") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise click.BadParameter('give {"<expert>": {<settings>}, ...}', param_hint="--expert-config")
    from myriad.errors import ConfigError, UnknownExpertError
    from myriad.serve.experts import check_operator_config

    try:
        return check_operator_config(data)
    except (ConfigError, UnknownExpertError) as exc:
        raise click.BadParameter(str(exc), param_hint="--expert-config") from None


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help=_HOST_HELP)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--token", "tokens", multiple=True,
              help="Bearer token every /api/ request must send, taken whole (at least 16 characters; repeat for several "
                   "clients, each its own owner). Without --token or --token-file, the environment variable "
                   "MYRIAD_SERVE_TOKEN holds one. Required off loopback.")
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="A file of bearer tokens, one per line (each line taken whole), besides any --token.")
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              help="Another host name clients may use in the Host header (besides loopback names and --host); "
                   "'*': any (needs a token).")
@click.option("--expert", default=DEFAULT_EXPERT, show_default=True,
              help="Default expert of new profiles: one expert or a fusion 'a+b' (see `myriad experts`).")
@click.option("--expert-config", default=None, metavar="JSON|FILE",
              help='Operator settings per expert, e.g. \'{"<expert>": {"backbone": "wide_resnet50_2", "weights": "/models/wrn50.pth"}}\'; '
                   "a fusion's members take their own expert's entry, then the fusion's, per member "
                   "('{\"a+b\": {\"a\": {...}}}'). "
                   "Clients may only add bounded, harmless settings "
                   "(see docs/serving.md).")
@false_alarm_rate_option
@answers_option
@click.option("--lmm", default="mini", show_default=True, help="'mini' (shipped weights), a weights file, or 'none' (expert only).")
@click.option("--device", default="cpu", show_default=True, help="Torch device of the LMM and the experts.")
@precision_option
@click.option("--data-root", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Allow fitting profiles from server-side folders under this directory (off by default).")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.001), default=20.0, show_default=True, help="Largest uploaded file, in MiB.")
@click.option("--max-request-mb", type=click.FloatRange(min=0.001), default=256.0, show_default=True,
              help="Largest request body, in MiB, counted while it streams in (an inspection: one file's limit).")
@click.option("--max-request-pixels", type=click.IntRange(64), default=4096 * 4096, show_default=True,
              help="Decoded pixels of all the images of one request together (uploads or a --data-root folder).")
@click.option("--max-files", type=click.IntRange(1), default=64, show_default=True, help="Most normal images per profile.")
@click.option("--max-side", type=click.IntRange(8), default=4096, show_default=True, help="Largest image side, in pixels.")
@click.option("--max-pixels", type=click.IntRange(64), default=4096 * 4096, show_default=True, help="Largest image area, in pixels.")
@click.option("--max-question-chars", type=click.IntRange(1), default=500, show_default=True, help="Longest question (ask, follow-ups).")
@click.option("--max-turns", type=click.IntRange(1), default=8, show_default=True, help="Follow-up questions per session.")
@click.option("--max-new-tokens", type=click.IntRange(1), default=64, show_default=True, help="Tokens per answer at most.")
@click.option("--max-generation-s", type=click.FloatRange(min=0.1), default=20.0, show_default=True, help="Seconds of decoding per answer at most.")
@click.option("--max-profiles", type=click.IntRange(1), default=32, show_default=True, help="Profiles kept in memory, all clients.")
@click.option("--max-sessions", type=click.IntRange(1), default=128, show_default=True, help="Inspected images (with their chats) kept, all clients.")
@click.option("--per-client-profiles", type=click.IntRange(1), default=None, help="Profiles one client may keep [default: a quarter of --max-profiles].")
@click.option("--per-client-sessions", type=click.IntRange(1), default=None, help="Sessions one client may keep [default: a quarter of --max-sessions].")
@click.option("--max-memory-mb", type=click.FloatRange(min=1), default=2048.0, show_default=True,
              help="Memory the profiles and sessions of all clients may hold together, in MiB (least recently used dropped).")
@click.option("--per-client-memory-mb", type=click.FloatRange(min=1), default=None,
              help="Memory one client's profiles and sessions may hold, in MiB [default: a quarter of --max-memory-mb].")
@click.option("--max-connections", type=click.IntRange(1), default=128, show_default=True,
              help="Open connections at most; past it, the one waiting longest without a complete request is closed.")
@click.option("--header-timeout-s", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds a connection has to send its request headers (408 past it).")
@click.option("--body-timeout-s", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds the server waits for the next piece of a request body (408 past it).")
@click.option("--request-timeout-s", type=click.FloatRange(min=0.1), default=300.0, show_default=True,
              help="Seconds a whole request body may take to arrive (408 past it).")
@click.option("--keep-alive-s", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds an idle keep-alive connection is kept open.")
@click.option("--profile", "profiles", multiple=True, metavar="NAME=PROFILE",
              help="Preload a profile folder written by `myriad fit` as NAME, shared by every client, read-only (repeatable).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep clients' fitted profiles in this folder across restarts (saved when fitted, loaded at start).")
@click.option("--max-folder-images", type=click.IntRange(1), default=10_000, show_default=True,
              help="Most normal images per profile fitted from a --data-root folder (uploads: --max-files).")
@click.option("--no-ui", is_flag=True, help="Serve the REST API only, without the web page.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info", show_default=True)
def serve_command(
    host: str,
    port: int,
    tokens: tuple[str, ...],
    token_file: Path | None,
    allowed_hosts: tuple[str, ...],
    expert: str,
    expert_config: str | None,
    false_alarm_rate: float | None,
    answers: str,
    lmm: str,
    device: str,
    precision: str,
    data_root: Path | None,
    max_upload_mb: float,
    max_request_mb: float,
    max_request_pixels: int,
    max_files: int,
    max_side: int,
    max_pixels: int,
    max_question_chars: int,
    max_turns: int,
    max_new_tokens: int,
    max_generation_s: float,
    max_profiles: int,
    max_sessions: int,
    per_client_profiles: int | None,
    per_client_sessions: int | None,
    max_memory_mb: float,
    per_client_memory_mb: float | None,
    max_connections: int,
    header_timeout_s: float,
    body_timeout_s: float,
    request_timeout_s: float,
    keep_alive_s: float,
    profiles: tuple[str, ...],
    state_dir: Path | None,
    max_folder_images: int,
    no_ui: bool,
    log_level: str,
) -> None:
    """Serve the inspection API at /api (schema at /docs) and the web page at /ui.

    The LMM is loaded once at start-up and shared by every profile and request. Off loopback,
    a token is required; see docs/serving.md for what the server does and does not protect.
    """
    try:
        import uvicorn

        from myriad.serve.app import create_app
    except ImportError as exc:
        raise click.ClickException(f"`myriad serve` needs the serve extra ({exc.name} is missing): pip install 'myriad[serve]'") from exc
    from myriad.errors import WeightsError
    from myriad.profiles import ProfileError
    from myriad.serve.profiles import check_profile_name
    from myriad.fusion import member_names
    from myriad.serve.connections import check_open_files, guarded_protocol
    from myriad.serve.limits import Limits
    from myriad.serve.security import AccessPolicy, check_bind

    tokens = _read_tokens(tokens, token_file)
    try:
        check_bind(host, tokens, allowed_hosts)
        check_open_files(max_connections)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    member_names(expert)  # an unknown default expert (or member) is a start-up error naming the installed ones
    operator = _expert_config(expert_config)
    preload = {}
    for value in profiles:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise click.BadParameter(f"{value!r}: give NAME=PROFILE_FOLDER", param_hint="--profile")
        try:
            check_profile_name(name)
        except Exception as exc:  # noqa: BLE001 - the server's 422 error, here a usage error
            raise click.BadParameter(str(exc), param_hint="--profile") from None
        if name in preload:
            raise click.BadParameter(f"{name!r} given twice", param_hint="--profile")
        preload[name] = Path(folder)
    limits = Limits(
        max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_files=max_files, max_side=max_side, max_pixels=max_pixels,
        max_body_bytes=int(max_request_mb * 1024 * 1024), max_question_chars=max_question_chars, max_turns=max_turns,
        max_new_tokens=max_new_tokens, max_generation_s=max_generation_s, max_folder_images=max_folder_images,
        max_request_pixels=max_request_pixels, body_timeout_s=body_timeout_s, request_timeout_s=request_timeout_s,
    )
    policy = AccessPolicy.for_bind(host, tokens, allowed_hosts)
    mib = 1024 * 1024
    click.echo(f"loading the LMM ({lmm}) ...", err=True)
    try:
        app = create_app(
            lmm=lmm, expert=expert, device=device, precision=precision, limits=limits, data_root=data_root,
            max_profiles=max_profiles, max_sessions=max_sessions, per_client_profiles=per_client_profiles,
            per_client_sessions=per_client_sessions, max_memory_bytes=int(max_memory_mb * mib),
            per_client_memory_bytes=None if per_client_memory_mb is None else int(per_client_memory_mb * mib),
            expert_config=operator, false_alarm_rate=false_alarm_rate, answers=answers, policy=policy, ui=not no_ui,
            profiles=preload, state_dir=state_dir,
        )
    except ProfileError as exc:  # a --profile folder that does not load: named, nothing served
        raise click.ClickException(str(exc)) from exc
    except WeightsError as exc:
        raise click.ClickException(
            f"{exc}\nStart with `--lmm none` for expert-only answers, or `--lmm PATH` for trained weights."
        ) from exc
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"Myriad at http://{shown}:{port}/ (page /ui, API /api, schema /docs)"
               + ("; token required" if tokens else ""), err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=keep_alive_s,
                http=guarded_protocol(max_connections, header_timeout_s))
