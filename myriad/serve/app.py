"""The FastAPI application: :func:`create_app` builds it around one :class:`InspectionService`.

Routes (all JSON unless said; the schema is served at ``/openapi.json``, browsable at ``/docs``):

- ``GET /api/health``, ``GET /api/experts``
- ``GET /api/profiles``; ``POST /api/profiles/{name}`` fits a profile from uploaded normal images
  (multipart ``files``) or a server-side ``folder``; ``GET`` / ``DELETE /api/profiles/{name}``
- ``POST /api/profiles/{name}/inspect`` inspects one uploaded ``file`` and opens a session
- ``GET /api/sessions/{id}``, ``GET /api/sessions/{id}/overlay.png`` (PNG),
  ``POST /api/sessions/{id}/ask`` (a follow-up question), ``DELETE /api/sessions/{id}``
- ``/ui/``: the web page (Gradio), unless built with ``ui=False``
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, File, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse, RedirectResponse

from myriad import __version__
from myriad.errors import MyriadError
from myriad.serve.errors import ServeError, status_of
from myriad.serve.limits import Limits, check_count, display_name, human_bytes, load_checked_image, request_tempdir, save_upload
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
from myriad.inspection import DEFAULT_PRECISION
from myriad.serve.service import InspectionService

__all__ = ["create_app"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        403: "server-side folder not allowed",
        404: "unknown profile, session or expert",
        409: "not possible in the server's state (e.g. follow-ups without the LMM)",
        413: "upload too large or too many files",
    }.items()
}


def create_app(
    service: InspectionService | None = None,
    *,
    lmm: str | Path | None = "mini",
    model: Any = None,
    expert: str = "patchcore",
    device: str = "cpu",
    precision: str = DEFAULT_PRECISION,
    limits: Limits | None = None,
    data_root: str | Path | None = None,
    max_profiles: int = 32,
    max_sessions: int = 128,
    ui: bool = True,
) -> FastAPI:
    """Build the Myriad server.

    The LMM is loaded here, once, and shared by every profile: pass ``model`` to inject one,
    else ``lmm`` (``"mini"``, a weights path or ``"none"``) is loaded and a missing weights file
    raises :class:`myriad.errors.WeightsError`; ``precision`` as in :func:`myriad.inspection.load_lmm`. A ready
    ``service`` overrides all of these.
    ``ui=False`` leaves out the Gradio page (and its import).
    """
    if service is None:
        from myriad.serve.profiles import ProfileStore

        options: dict[str, Any] = {
            "default_expert": expert,
            "device": device,
            "limits": limits or Limits(),
            "store": ProfileStore(max_profiles=max_profiles, max_sessions=max_sessions),
            "data_root": data_root,
        }
        if model is not None:
            service = InspectionService(model, lmm_label="injected", **options)
        else:
            service = InspectionService.load(lmm, precision=precision, **options)
    app = FastAPI(
        title="Myriad",
        version=__version__,
        description="Industrial anomaly detection: vision experts produce anomaly maps, Myriad answers in text.",
    )
    app.state.service = service
    app.add_middleware(_BodyLimit, max_bytes=service.limits.max_request_bytes)
    _add_routes(app, service)

    @app.exception_handler(MyriadError)
    def _myriad_error(request: Request, exc: MyriadError) -> JSONResponse:
        return JSONResponse(status_code=status_of(exc), content={"detail": str(exc)})

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/ui/" if ui else "/docs")

    if ui:
        from myriad.serve.page import mount_page

        app = mount_page(app, service, path="/ui")
    return app


class _BodyLimit:
    """Refuse API requests whose declared body is over the limit before reading it (413)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith("/api/"):
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                detail = f"request body of {human_bytes(int(length))} is over the limit of {human_bytes(self.max_bytes)}"
                await JSONResponse(status_code=413, content={"detail": detail})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _parse_config(value: Optional[str]) -> dict[str, Any]:
    if not value or not value.strip():
        return {}
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ServeError(f"config: not valid JSON: {exc}", status=422) from None
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
    return [TurnOut(question=q, answer=a) for q, a in session.turns]


def _add_routes(app: FastAPI, service: InspectionService) -> None:
    limits = service.limits

    @app.get("/api/health", response_model=HealthOut, tags=["server"])
    def health() -> dict[str, Any]:
        """Liveness, version, the loaded LMM and how many profiles and sessions are held."""
        return service.health()

    @app.get("/api/experts", response_model=list[ExpertOut], tags=["server"])
    def experts() -> list[dict[str, Any]]:
        """The installed expert plugins."""
        return service.experts()

    @app.get("/api/profiles", response_model=list[ProfileOut], tags=["profiles"])
    def list_profiles() -> list[dict[str, Any]]:
        """Every fitted profile, least recently used first."""
        return [p.describe() for p in service.store.list_profiles()]

    @app.post("/api/profiles/{name}", response_model=ProfileOut, status_code=201, responses=_ERRORS, tags=["profiles"])
    def fit_profile(
        name: str,
        files: Optional[list[UploadFile]] = File(None, description="normal reference images (few-shot: 1 to 16)"),
        folder: Optional[str] = Form(None, description="instead of files: a folder under the server's --data-root"),
        expert: Optional[str] = Form(None, description="expert name (default: the server's --expert)"),
        config: Optional[str] = Form(None, description="expert settings as a JSON object"),
    ) -> dict[str, Any]:
        """Fit (or refit) the profile ``name``: the expert calibrated on normal images."""
        settings = _parse_config(config)
        if files and folder:
            raise ServeError("give either uploaded files or a server-side folder, not both", status=422)
        if folder:
            images = service.folder_images(folder)
        else:
            files = files or []
            check_count(len(files), "normal images", limits)
            with request_tempdir() as tmp:
                images = []
                for i, upload in enumerate(files):
                    shown = display_name(upload.filename, i)
                    path = save_upload(upload.file, upload.filename, tmp, i, limits)
                    images.append(load_checked_image(path, shown, limits))
        return service.fit_profile(name, images, expert=expert, config=settings).describe()

    @app.get("/api/profiles/{name}", response_model=ProfileOut, responses=_ERRORS, tags=["profiles"])
    def get_profile(name: str) -> dict[str, Any]:
        """One fitted profile."""
        return service.store.get_profile(name).describe()

    @app.delete("/api/profiles/{name}", status_code=204, responses=_ERRORS, tags=["profiles"])
    def delete_profile(name: str) -> Response:
        """Forget a profile."""
        service.store.delete_profile(name)
        return Response(status_code=204)

    @app.post("/api/profiles/{name}/inspect", response_model=InspectionOut, responses=_ERRORS, tags=["inspection"])
    def inspect(
        name: str,
        file: UploadFile = File(..., description="the image to inspect"),
        ask: Optional[str] = Form(None, description="instruction instead of the default question"),
    ) -> InspectionOut:
        """Inspect one image: calibrated score, decision, Myriad's answer, timings and an overlay URL.

        A 422 ``{"detail": "<file>: ..."}`` names an unreadable image or one over the dimension limits.
        """
        profile = service.store.get_profile(name)
        shown = display_name(file.filename)
        with request_tempdir() as tmp:
            path = save_upload(file.file, file.filename, tmp, 0, limits)
            image = load_checked_image(path, shown, limits)
        return _inspection(app, service.inspect(profile, image, shown, ask))

    @app.get("/api/sessions/{session_id}", response_model=SessionOut, responses=_ERRORS, tags=["inspection"])
    def get_session(session_id: str) -> SessionOut:
        """An inspected image's result and its conversation so far."""
        session = service.store.get_session(session_id)
        return SessionOut(session_id=session.id, inspection=_inspection(app, session), turns=_turns(session))

    @app.get(
        "/api/sessions/{session_id}/overlay.png",
        name="session_overlay",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "the heat-map overlay"}, 404: _ERRORS[404]},
        tags=["inspection"],
    )
    def session_overlay(session_id: str) -> Response:
        """The heat-map overlay of an inspected image (PNG, the image's own size)."""
        return Response(service.store.get_session(session_id).overlay_png, media_type="image/png")

    @app.post("/api/sessions/{session_id}/ask", response_model=AnswerOut, responses=_ERRORS, tags=["inspection"])
    def ask(session_id: str, body: QuestionIn) -> AnswerOut:
        """Ask a follow-up question about an inspected image (needs the LMM); the conversation is kept."""
        answer = service.ask(session_id, body.question)
        return AnswerOut(session_id=session_id, answer=answer, turns=_turns(service.store.get_session(session_id)))

    @app.delete("/api/sessions/{session_id}", status_code=204, responses=_ERRORS, tags=["inspection"])
    def delete_session(session_id: str) -> Response:
        """Forget a session and its conversation."""
        service.store.delete_session(session_id)
        return Response(status_code=204)

