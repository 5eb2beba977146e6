"""Request bodies: a byte limit per route and timeouts for slow senders, enforced while the body streams in.

:func:`body_limit` says how large a body each route takes: the fit route its files at their
limit plus the form fields, the inspect route one image plus the form fields, every other route a
small JSON body. :class:`BodyGuardMiddleware` counts the bytes as they arrive, whatever the
transfer encoding (a declared ``Content-Length`` over the limit is refused before anything is
read; a chunked body as soon as it passes it), and gives up on a client that stops sending
(``body_timeout_s`` between two pieces) or sends too slowly (``request_timeout_s`` for the whole
body). A refusal is one JSON line (413 or 408) with ``Connection: close``; the application then
sees the client as gone, stops reading, and its upload's temporary files are closed and removed.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Awaitable, Callable

from myriad.serve.limits import Limits, human_bytes

__all__ = ["BodyGuardMiddleware", "JSON_BODY_BYTES", "body_limit"]

#: The body of any route that takes no upload (a follow-up question is at most a few KiB of JSON).
JSON_BODY_BYTES = 64 * 1024

Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def body_limit(method: str, path: str, limits: Limits) -> tuple[int, str]:
    """The largest body ``method path`` accepts, and what sets it (for the refusal's message)."""
    parts = path.strip("/").split("/")
    if method == "POST" and parts[:2] == ["api", "profiles"]:
        if len(parts) == 4 and parts[3] == "inspect":
            return limits.max_one_image_request_bytes, "one image: --max-upload-mb plus the form fields"
        if len(parts) == 3:
            return limits.max_request_bytes, "--max-files images of --max-upload-mb, at most --max-request-mb"
    return JSON_BODY_BYTES, "a JSON body"


class BodyGuardMiddleware:
    """Per-route body limits and body timeouts (see the module doc), in front of the application."""

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, what = body_limit(scope.get("method", "GET"), scope.get("path", ""), self.limits)
        length = next((v for k, v in scope.get("headers") or [] if k.lower() == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > limit:
            await json_answer(send, 413, _too_large(int(length), limit, what), close=True)
            return
        guard = _Guard(receive, send, limit, what, self.limits)
        await self.app(scope, guard.receive, guard.send)


def _too_large(size: int | None, limit: int, what: str) -> str:
    shown = f"request body of {human_bytes(size)}" if size is not None else "request body"
    return f"{shown} is over the limit of {human_bytes(limit)} for this route ({what})"


class _Guard:
    """``receive`` / ``send`` of one request: bytes counted, pieces timed, one refusal at most."""

    def __init__(self, receive: Receive, send: Send, limit: int, what: str, limits: Limits) -> None:
        self._receive, self._send = receive, send
        self.limit, self.what = limit, what
        self.gap_s, self.total_s = limits.body_timeout_s, limits.request_timeout_s
        self.deadline = time.monotonic() + self.total_s
        self.read = 0
        self.body_done = False
        self.started = False
        self.refused = False

    async def _refuse(self, status: int, detail: str) -> dict:
        self.refused = True
        if not self.started:
            self.started = True
            await json_answer(self._send, status, detail, close=True)
        return {"type": "http.disconnect"}

    async def receive(self) -> dict:
        if self.refused:
            return {"type": "http.disconnect"}
        if self.body_done:  # the body is in: what comes now is a disconnect, whenever it comes
            return await self._receive()
        wait = min(self.gap_s, self.deadline - time.monotonic())
        try:
            message = await asyncio.wait_for(self._receive(), timeout=max(wait, 0.0))
        except asyncio.TimeoutError:
            if wait >= self.gap_s:
                detail = f"the request body stalled: nothing arrived for {self.gap_s:g} s (--body-timeout-s)"
            else:
                detail = f"the request body did not arrive within {self.total_s:g} s (--request-timeout-s)"
            return await self._refuse(408, detail)
        if message["type"] == "http.request":
            self.read += len(message.get("body", b""))
            if self.read > self.limit:
                return await self._refuse(413, _too_large(None, self.limit, self.what))
            self.body_done = not message.get("more_body", False)
        return message

    async def send(self, message: dict) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


async def json_answer(send: Send, status: int, detail: str, close: bool = False,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer ``{"detail": detail}`` with ``status`` (and ``Connection: close`` when ``close``)."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
