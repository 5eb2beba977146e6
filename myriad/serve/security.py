"""Who may talk to the server, and how much they may send: one ASGI middleware, checked before any route.

In order, for every HTTP request:

1. **Host** must be an allowed name (loopback names, the ``--host`` the server binds, each
   ``--allowed-host``): a page on another site that re-points its DNS name at this server
   (DNS rebinding) is refused with 400.
2. **Origin** (and ``Sec-Fetch-Site``) of a state-changing request (POST, PUT, PATCH, DELETE)
   must be this server's own: a cross-site form or script is refused with 403 (CSRF).
3. **Token**: with ``--token``, every ``/api/`` request except ``GET /api/health`` needs
   ``Authorization: Bearer <token>`` (401 otherwise).

(Body sizes and timeouts come next, per route: :mod:`myriad.serve.bodies`.)

It also names the *owner* of the request (``scope["state"]["owner"]``, ``"<principal>/<client id>"``):
the *principal* is which token was given (``t0``, ``t1``, ...; ``local`` when the server needs none)
and the client id comes from the ``X-Myriad-Client`` header (the page sends a random one per tab).
Profiles and sessions belong to the owner that made them; quotas count by principal
(:mod:`myriad.serve.profiles`), since a client chooses its id but not its token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import urlsplit

__all__ = ["AccessPolicy", "SecurityMiddleware", "is_loopback", "CLIENT_HEADER", "MIN_TOKEN_CHARS", "check_bind", "check_tokens"]

#: Header naming the client within one token (letters, digits, ``._-``, at most 64).
CLIENT_HEADER = "x-myriad-client"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: Shortest token accepted at start-up (``openssl rand -hex 16`` gives 32 characters).
MIN_TOKEN_CHARS = 16
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_PUBLIC = {("GET", "/api/health")}

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only reaches this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    return host.strip().strip("[]") in ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class AccessPolicy:
    """What the middleware lets in: tokens and host names."""

    #: bearer tokens, each taken whole; empty: no token needed (only allowed on loopback, see :func:`check_bind`)
    tokens: tuple[str, ...] = ()
    #: host names (no port) a request's Host header may name; ``"*"`` allows any (only with a token)
    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES
    _digests: tuple[bytes, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        if any(not t for t in self.tokens):
            raise ValueError("a token must not be empty")
        if "*" in self.allowed_hosts and not self.tokens:
            raise ValueError(_ANY_HOST_NEEDS_TOKEN)
        object.__setattr__(self, "_digests", tuple(hashlib.sha256(t.encode()).digest() for t in self.tokens))

    @classmethod
    def for_bind(cls, host: str, tokens: Iterable[str] = (), extra_hosts: Iterable[str] = (), **kwargs: Any) -> "AccessPolicy":
        """The policy of a server bound to ``host``: loopback names, ``host`` itself (unless a wildcard) and ``extra_hosts``."""
        names = list(LOOPBACK_NAMES)
        if not _is_wildcard(host):
            names.append(host.strip().strip("[]").lower())
        names += [h.strip().strip("[]").lower() for h in extra_hosts if h.strip()]
        return cls(tokens=tuple(tokens), allowed_hosts=tuple(dict.fromkeys(names)), **kwargs)

    @property
    def token_required(self) -> bool:
        """Whether ``/api/`` requests need a bearer token."""
        return bool(self.tokens)

    def host_allowed(self, host_header: str | None) -> bool:
        """Whether a Host header names this server."""
        if "*" in self.allowed_hosts:
            return True
        if not host_header:
            return False
        name = urlsplit(f"//{host_header}").hostname
        return name is not None and name.lower() in self.allowed_hosts

    def token_owner(self, authorization: str | None) -> str | None:
        """The owner label of a valid ``Bearer`` token (``"t<n>"``), ``"local"`` when none is needed, else None."""
        if not self.tokens:
            return "local"
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        digest = hashlib.sha256(value.strip().encode()).digest()
        found = None
        for index, known in enumerate(self._digests):  # compare against all: no timing hint of which
            if hmac.compare_digest(digest, known):
                found = f"t{index}"
        return found


_ANY_HOST_NEEDS_TOKEN = ("--allowed-host '*' lets any web site's page reach the server through DNS rebinding: "
                         "give a token (--token, --token-file or MYRIAD_SERVE_TOKEN) or name the hosts")


def check_bind(host: str, tokens: Iterable[str], allowed_hosts: Iterable[str] = ()) -> None:
    """Refuse to serve beyond loopback, or to any Host name (``--allowed-host '*'``), without a token:
    raises ValueError with a one-line reason."""
    tokens = list(tokens)
    if not is_loopback(host) and not any(tokens):
        raise ValueError(
            f"--host {host} is reachable from the network: give a token (--token, --token-file or MYRIAD_SERVE_TOKEN) "
            "so that only clients who know it can use the server"
        )
    if "*" in [h.strip() for h in allowed_hosts] and not any(tokens):
        raise ValueError(_ANY_HOST_NEEDS_TOKEN)


def check_tokens(tokens: Iterable[str]) -> tuple[str, ...]:
    """The tokens, each whole (never split on spaces); raises ValueError (one line) for one shorter than
    :data:`MIN_TOKEN_CHARS` or with a line break, naming its position only (a token is never echoed)."""
    checked = tuple(tokens)
    for index, token in enumerate(checked, 1):
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"token {index} has {len(token)} characters; a token needs at least {MIN_TOKEN_CHARS} "
                             "(e.g. openssl rand -hex 16)")
        if any(c in token for c in "\r\n\0"):
            raise ValueError(f"token {index} holds a line break or NUL: give one token per --token or per line of --token-file")
    return checked


def same_origin(origin: str, host_header: str | None, scheme: str) -> bool:
    """Whether an Origin header names the very server the Host header names."""
    if not host_header or origin == "null":
        return False
    parts = urlsplit(origin)
    host = urlsplit(f"//{host_header}")
    default = {"http": 80, "https": 443}
    try:
        origin_port = parts.port or default.get(parts.scheme)
        host_port = host.port or default.get(scheme)
    except ValueError:
        return False
    return (parts.hostname or "").lower() == (host.hostname or "").lower() and origin_port == host_port


class SecurityMiddleware:
    """Host, Origin, token and streamed body-size checks; sets the request's owner (see the module doc)."""

    def __init__(self, app: Any, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        method, path = scope.get("method", "GET"), scope.get("path", "")
        host = headers.get("host")
        if not self.policy.host_allowed(host):
            hosts = ", ".join(self.policy.allowed_hosts)
            await _json(send, 400, f"Host header not allowed: the server answers to {hosts} (start it with --allowed-host NAME)")
            return
        if method in _UNSAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and not same_origin(origin, host, scope.get("scheme", "http")):
                await _json(send, 403, "cross-origin request refused: Origin does not match this server")
                return
            if headers.get("sec-fetch-site") == "cross-site":
                await _json(send, 403, "cross-site request refused (Sec-Fetch-Site: cross-site)")
                return
        token_owner = self.policy.token_owner(headers.get("authorization"))
        if path.startswith("/api/") and (method, path) not in _PUBLIC and token_owner is None:
            await _json(send, 401, "missing or wrong token: send the header 'Authorization: Bearer <token>'",
                        extra=[(b"www-authenticate", b"Bearer")])
            return
        client = headers.get(CLIENT_HEADER, "")
        if client and not _CLIENT_ID.match(client):
            await _json(send, 400, f"{CLIENT_HEADER}: use 1 to 64 letters, digits, '.', '_' or '-'")
            return
        scope.setdefault("state", {})["owner"] = f"{token_owner or 'anonymous'}/{client or 'default'}"
        await self.app(scope, receive, _with_headers(send, response_headers(path)))


def response_headers(path: str) -> list[tuple[bytes, bytes]]:
    """Headers added to every answer: no sniffing, no framing, no referrer; the page also gets a strict CSP."""
    headers = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]
    if path == "/ui" or path.startswith("/ui/"):
        headers.append((b"content-security-policy", _PAGE_CSP))
    return headers


_PAGE_CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
             b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    """``send`` that adds ``headers`` to the answer's start."""

    async def send_with_headers(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return send_with_headers


async def _json(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
