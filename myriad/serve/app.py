"""The FastAPI application: :func:`create_app` builds it around one :class:`InspectionService`.

Routes (all JSON unless said; the schema is served at ``/openapi.json``, browsable at ``/docs``; no ``/redoc``):

- ``GET /api/health``, ``GET /api/experts``
- ``GET /api/profiles``; ``POST /api/profiles/{name}`` fits a profile from uploaded normal images
  (multipart ``files``) or a ``folder`` under the server's ``--data-root``; ``GET`` / ``DELETE /api/profiles/{name}``
- ``POST /api/profiles/{name}/inspect`` inspects one uploaded ``file`` and opens a session
- ``GET /api/sessions/{id}``, ``GET /api/sessions/{id}/overlay.png`` (PNG),
  ``POST /api/sessions/{id}/ask`` (a follow-up question), ``DELETE /api/sessions/{id}``
- ``/ui/``: the web page, static files of this package (:mod:`myriad.serve.page`) that call the API
  above and nothing else, unless built with ``ui=False``

Profiles and sessions belong to the client that made them (see :mod:`myriad.serve.security`).
Requests pass :class:`~myriad.serve.security.SecurityMiddleware` (Host, Origin, token, owner), then
:class:`~myriad.serve.bodies.BodyGuardMiddleware` (the route's body limit, body timeouts).
Every refusal is JSON ``{"detail": "<one line>"}`` (also for 422s), never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, File, Form, Path as PathParam, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from myriad import __version__
from myriad.defaults import DEFAULT_EXPERT
from myriad.errors import MyriadError
from myriad.fusion import SEPARATOR
from myriad.inspection import DEFAULT_PRECISION
from myriad.serve.errors import ServeError, status_of
from myriad.serve.bodies import BodyGuardMiddleware
from myriad.serve.limits import (
    Limits,
    PixelBudget,
    check_count,
    clip,
    display_name,
    load_checked_image,
    request_tempdir,
    save_upload,
)
from myriad.serve.profiles import Session
from myriad.serve.schemas import (
    AnswerOut,
    ErrorOut,
    ExpertOut,
    HealthOut,
    InspectionOut,
    ProfileOut,
    QuestionIn,
    SessionOut,
    TurnOut,
)
from myriad.serve.security import AccessPolicy, SecurityMiddleware
from myriad.serve.service import DEFAULT_OWNER, InspectionService

__all__ = ["create_app"]

#: Longest ``config`` form field (JSON) accepted.
MAX_CONFIG_CHARS = 4096

_CODES = {
    400: "a Host header the server does not answer to, or a malformed client id",
    401: "missing or wrong bearer token (servers started with --token)",
    403: "a cross-origin request, a server-side folder not allowed, or a file linking outside the data root",
    404: "unknown profile, session or expert (other clients' are unknown to you)",
    408: "the request body stalled or came too slowly (--body-timeout-s, --request-timeout-s)",
    409: "not possible in the server's state (follow-ups without the LMM, or past the turn limit)",
    413: "body, upload or decoded pixels over the route's limit, too many files, or a profile over a client's memory share",
    422: "an invalid field: image, name, expert settings, question or folder",
    429: "the server is full (in count or memory) of other clients' recent profiles or sessions",
}
#: Path parameters as the schema documents them (the same rules the store applies).
_NAME = PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="profile name: 1 to 64 letters, digits, '._-'")
_SESSION = PathParam(pattern=r"^[0-9a-f]{32}$", description="session id, as returned by an inspection")
_CONFIG_HELP = (
    "expert settings as a JSON object (only the allowed fields); for a fusion, per member: "
    + json.dumps({name: {} for name in DEFAULT_EXPERT.split(SEPARATOR)}).replace("{}", "{...}")
)
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut, "description": text} for code, text in _CODES.items()}


def create_app(
    service: InspectionService | None = None,
    *,
    lmm: str | Path | None = "mini",
    model: Any = None,
    expert: str = DEFAULT_EXPERT,
    device: str = "cpu",
    precision: str = DEFAULT_PRECISION,
    limits: Limits | None = None,
    data_root: str | Path | None = None,
    max_profiles: int = 32,
    max_sessions: int = 128,
    per_client_profiles: int | None = None,
    per_client_sessions: int | None = None,
    max_memory_bytes: int = 2048 * 1024 * 1024,
    per_client_memory_bytes: int | None = None,
    expert_config: dict[str, dict[str, Any]] | None = None,
    false_alarm_rate: float | None = None,
    answers: str = "facts",
    policy: AccessPolicy | None = None,
    ui: bool = True,
    profiles: dict[str, str | Path] | None = None,
    state_dir: str | Path | None = None,
) -> FastAPI:
    """Build the Myriad server.

    The LMM is loaded here, once, and shared by every profile: pass ``model`` to inject one,
    else ``lmm`` (``"mini"``, a weights path or ``"none"``) is loaded and a missing weights file
    raises :class:`myriad.errors.WeightsError`; ``precision`` as in :func:`myriad.inspection.load_lmm`. A ready
    ``service`` overrides all of these. ``expert`` is the default expert of new profiles (a
    fusion such as ``"patchcore+global"`` by default). ``expert_config`` maps expert (or fusion)
    names to the operator's settings (clients may add only the allow-listed ones, per member for a
    fusion). ``false_alarm_rate`` calibrates every profile at that target rate instead of the
    paper's maximum held-out normal. ``answers`` is the answer route of every profile
    (:class:`myriad.inspection.Inspector`). ``policy`` says who may connect
    (default: loopback host names, no token). ``ui=False`` leaves out the web page.
    ``profiles`` maps names to profile folders written by ``myriad fit``: loaded at start, shared by
    every client, read-only (a folder that does not load is a start-up error naming it).
    ``state_dir`` keeps clients' fitted profiles across restarts: each is saved there when fitted
    and every saved one is loaded back at start (one that no longer loads is logged and skipped).
    ``max_profiles``, ``max_sessions`` and ``max_memory_bytes`` bound what the server keeps; the
    ``per_client_*`` quotas bound each token (default: a quarter each; without tokens every request is one
    principal, whose quota is then the whole).
    """
    policy = policy or AccessPolicy()
    if service is None:
        from myriad.serve.profiles import ProfileStore

        whole = not policy.token_required  # without tokens every request is one principal: its quota is the whole

        def quota(given: int | None, total: int) -> int | None:
            return given or (total if whole else None)

        store = ProfileStore(
            max_profiles, max_sessions, quota(per_client_profiles, max_profiles), quota(per_client_sessions, max_sessions),
            max_bytes=max_memory_bytes, per_client_bytes=quota(per_client_memory_bytes, max_memory_bytes),
        )
        options: dict[str, Any] = {
            "default_expert": expert,
            "device": device,
            "limits": limits or Limits(),
            "store": store,
            "data_root": data_root,
            "expert_config": expert_config,
            "false_alarm_rate": false_alarm_rate,
            "answers": answers,
            "state_dir": state_dir,
        }
        if model is not None:
            service = InspectionService(model, lmm_label="injected", **options)
        else:
            service = InspectionService.load(lmm, precision=precision, **options)
    for name, folder in (profiles or {}).items():
        service.preload(name, folder)
    if service.state_dir is not None:
        import logging

        restored, problems = service.restore()
        log = logging.getLogger("myriad.serve")
        for problem in problems:
            log.warning("saved profile not loaded: %s", problem)
        if restored:
            log.info("%d saved profiles loaded from %s", restored, service.state_dir)
    app = FastAPI(
        title="Myriad",
        version=__version__,
        description="Industrial anomaly detection: vision experts produce anomaly maps, Myriad answers in text.",
        redoc_url=None,
    )
    app.state.service = service
    app.state.policy = policy
    app.add_middleware(BodyGuardMiddleware, limits=service.limits)
    app.add_middleware(SecurityMiddleware, policy=policy)  # added last: runs first
    _add_routes(app, service)
    _add_error_handlers(app)

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/ui/" if ui else "/docs")

    if ui:
        from myriad.serve.page import mount_page

        mount_page(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MyriadError)
    def _myriad_error(request: Request, exc: MyriadError) -> JSONResponse:
        return JSONResponse(status_code=status_of(exc), content={"detail": clip(str(exc), 600)})

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": validation_detail(exc.errors())})

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        return JSONResponse(status_code=exc.status_code, content={"detail": clip(detail, 600)}, headers=exc.headers)


def validation_detail(errors: Any) -> str:
    """FastAPI's validation errors as one line, ``field: problem; ...``, without echoing the input."""
    parts = []
    for error in list(errors)[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header"))
        parts.append(f"{clip(where, 40) or 'request'}: {clip(str(error.get('msg', 'invalid')), 120)}")
    return "; ".join(parts) or "invalid request"


def _owner(request: Request) -> str:
    """The client a request comes from (set by :class:`SecurityMiddleware`)."""
    return getattr(request.state, "owner", DEFAULT_OWNER)


def _parse_config(value: Optional[str]) -> dict[str, Any]:
    if not value or not value.strip():
        return {}
    if len(value) > MAX_CONFIG_CHARS:
        raise ServeError(f"config: {len(value)} characters; the limit is {MAX_CONFIG_CHARS}", status=422)
    try:
        data = json.loads(value)
    except (json.JSONDecodeError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise ServeError(f"config: not valid JSON: {reason}", status=422) from None
    if not isinstance(data, dict):
        raise ServeError("config: must be a JSON object of expert settings", status=422)
    return data


def _inspection(app: FastAPI, session: Session) -> InspectionOut:
    return InspectionOut(
        session_id=session.id,
        profile=session.profile,
        overlay_url=app.url_path_for("session_overlay", session_id=session.id),
        **session.result.as_record(),
    )


def _turns(session: Session) -> list[TurnOut]:
    from myriad.answers_text import degeneracy_reasons

    return [
        TurnOut(question=q, answer=a, grounded_answer=session.result.grounded_for(q), answer_degenerate=degeneracy_reasons(a))
        for q, a in session.turns
    ]


def _add_routes(app: FastAPI, service: InspectionService) -> None:
    limits = service.limits

    @app.get("/api/health", response_model=HealthOut, responses={400: _ERRORS[400]}, tags=["server"])
    def health() -> dict[str, Any]:
        """Liveness, version, the loaded LMM (never a path), whether a token is needed, and the profiles and sessions
        held: how many, and the bytes they hold against the memory budget."""
        return {**service.health(), "token_required": app.state.policy.token_required}

    @app.get("/api/experts", response_model=list[ExpertOut], responses=_ERRORS, tags=["server"])
    def experts() -> list[dict[str, Any]]:
        """The fused experts on offer (the server's default first when it is one), then the installed expert plugins."""
        return service.experts()

    @app.get("/api/profiles", response_model=list[ProfileOut], responses=_ERRORS, tags=["profiles"])
    def list_profiles(request: Request) -> list[dict[str, Any]]:
        """Your fitted profiles, least recently used first."""
        return [p.describe() for p in service.store.list_profiles(_owner(request))]

    @app.post("/api/profiles/{name}", response_model=ProfileOut, status_code=201, responses=_ERRORS, tags=["profiles"])
    def fit_profile(
        request: Request,
        name: str = _NAME,
        files: Optional[list[UploadFile]] = File(None, description="normal reference images (few-shot: 1 to 16)"),
        folder: Optional[str] = Form(None, description="instead of files: a folder under the server's --data-root"),
        expert: Optional[str] = Form(
            None, description=f"expert name, or a fusion such as {DEFAULT_EXPERT!r} (default: the server's --expert)"
        ),
        config: Optional[str] = Form(None, description=_CONFIG_HELP),
    ) -> dict[str, Any]:
        """Fit (or refit) your profile ``name``: the expert calibrated on normal images."""
        settings = _parse_config(config)
        if files and folder:
            raise ServeError("give either uploaded files or a server-side folder, not both", status=422)
        if folder:
            images = service.folder_images(folder)
        else:
            files = files or []
            check_count(len(files), "normal images", limits)
            budget = PixelBudget(limits)
            with request_tempdir() as tmp:
                images = []
                for i, upload in enumerate(files):
                    shown = display_name(upload.filename, i)
                    path = save_upload(upload.file, upload.filename, tmp, i, limits)
                    images.append(load_checked_image(path, shown, limits, budget))
        return service.fit_profile(name, images, expert=expert, config=settings, owner=_owner(request),
                                   from_folder=bool(folder)).describe()

    @app.get("/api/profiles/{name}", response_model=ProfileOut, responses=_ERRORS, tags=["profiles"])
    def get_profile(request: Request, name: str = _NAME) -> dict[str, Any]:
        """One of your fitted profiles."""
        return service.store.get_profile(name, _owner(request)).describe()

    @app.delete("/api/profiles/{name}", status_code=204, responses=_ERRORS, tags=["profiles"])
    def delete_profile(request: Request, name: str = _NAME) -> Response:
        """Forget one of your profiles."""
        service.delete_profile(name, _owner(request))
        return Response(status_code=204)

    @app.post("/api/profiles/{name}/inspect", response_model=InspectionOut, responses=_ERRORS, tags=["inspection"])
    def inspect(
        request: Request,
        name: str = _NAME,
        file: UploadFile = File(..., description="the image to inspect"),
        ask: Optional[str] = Form(None, description="instruction instead of the default question (bounded length)"),
    ) -> InspectionOut:
        """Inspect one image: calibrated score, decision, Myriad's answer, timings and an overlay URL.

        A fused expert's profile also gives each member's calibrated score and decision (``members``).

        A 422 ``{"detail": "<file>: ..."}`` names an unreadable image or one over the dimension limits.
        """
        owner = _owner(request)
        profile = service.store.get_profile(name, owner)
        ask = service.check_question(ask, "ask")
        shown = display_name(file.filename)
        with request_tempdir() as tmp:
            path = save_upload(file.file, file.filename, tmp, 0, limits)
            image = load_checked_image(path, shown, limits, PixelBudget(limits))
        return _inspection(app, service.inspect(profile, image, shown, ask, owner=owner))

    @app.get("/api/sessions/{session_id}", response_model=SessionOut, responses=_ERRORS, tags=["inspection"])
    def get_session(request: Request, session_id: str = _SESSION) -> SessionOut:
        """One of your inspected images: its result and its conversation so far."""
        session = service.store.get_session(session_id, _owner(request))
        return SessionOut(session_id=session.id, inspection=_inspection(app, session), turns=_turns(session))

    @app.get(
        "/api/sessions/{session_id}/overlay.png",
        name="session_overlay",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "the heat-map overlay"}, **_ERRORS},
        tags=["inspection"],
    )
    def session_overlay(request: Request, session_id: str = _SESSION) -> Response:
        """The heat-map overlay of an inspected image (PNG, the image's own size)."""
        return Response(service.store.get_session(session_id, _owner(request)).overlay_png, media_type="image/png")

    @app.post("/api/sessions/{session_id}/ask", response_model=AnswerOut, responses=_ERRORS, tags=["inspection"])
    def ask(request: Request, body: QuestionIn, session_id: str = _SESSION) -> AnswerOut:
        """Ask a follow-up question about an inspected image; the conversation is kept, bounded in turns.

        Route ``facts`` (the default) answers from the image's verdict and the map's facts; route ``lmm`` needs the LMM."""
        owner = _owner(request)
        answer = service.ask(session_id, body.question, owner=owner)
        turns = _turns(service.store.get_session(session_id, owner))
        last = turns[-1]
        return AnswerOut(
            session_id=session_id, answer=answer, grounded_answer=last.grounded_answer,
            answer_degenerate=last.answer_degenerate, turns=turns,
        )

    @app.delete("/api/sessions/{session_id}", status_code=204, responses=_ERRORS, tags=["inspection"])
    def delete_session(request: Request, session_id: str = _SESSION) -> Response:
        """Forget one of your sessions and its conversation."""
        service.store.delete_session(session_id, _owner(request))
        return Response(status_code=204)

