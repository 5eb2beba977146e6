"""Connections: a cap on how many are open and a deadline for each request's headers, in uvicorn's h11 protocol.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) but neither how long a client
may take to send its request headers nor how many connections may be open at once, so 220 sockets
that each send a header byte every few seconds hold 220 file descriptors for good. The protocol
class that :func:`guarded_protocol` makes adds both:

- **header deadline**: a connection must complete its request headers within ``header_timeout_s``
  of connecting (or of its previous answer); otherwise it is answered 408 and closed;
- **connection cap**: at most ``max_connections`` are open. A new connection past the cap closes the
  connection that has waited longest without sending a complete request (a slow or idle client)
  with 503; when every open connection is in the middle of a request, the new one is refused with
  503 instead. A client that sends its request at once is never the one waiting longest, so the
  cap cannot be filled by slow clients to lock out quick ones.

Bodies are bounded per route in the application (:mod:`myriad.serve.bodies`). Every refusal here
is one JSON line, written directly (the request, if any, was never parsed).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["FD_RESERVE", "check_open_files", "guarded_protocol"]

#: File descriptors kept free beyond the connections: the listening socket, logs, models, uploads' files.
FD_RESERVE = 64


def _raw_json(status: int, reason: str, detail: str) -> bytes:
    """A complete HTTP/1.1 answer ``{"detail": detail}`` that closes the connection."""
    body = json.dumps({"detail": detail}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode("latin-1") + body


def check_open_files(max_connections: int) -> None:
    """Raise ValueError (one line) when ``max_connections`` plus :data:`FD_RESERVE` is over the process's
    open-file limit: the server would then run out of descriptors before its own cap refuses anyone."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and max_connections + FD_RESERVE > soft:
        raise ValueError(
            f"--max-connections {max_connections} needs {max_connections + FD_RESERVE} open files, over this process's "
            f"limit of {soft} (ulimit -n): lower --max-connections to {max(1, soft - FD_RESERVE)} or raise the limit"
        )


def guarded_protocol(max_connections: int, header_timeout_s: float) -> type:
    """uvicorn's h11 protocol with a connection cap and a request-header deadline (see the module doc); pass it as
    ``uvicorn.run(..., http=...)``."""
    if max_connections < 1 or header_timeout_s <= 0:
        raise ValueError("max_connections and header_timeout_s must be positive")
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    busy = _raw_json(503, "Service Unavailable", f"the server has its maximum of {max_connections} connections open, "
                     "all in the middle of a request (--max-connections); try again shortly")
    evicted = _raw_json(503, "Service Unavailable", "closed to make room for a new connection: this one sent no "
                        f"complete request and the server has its maximum of {max_connections} open (--max-connections)")
    late = _raw_json(408, "Request Timeout", f"the request headers did not arrive within {header_timeout_s:g} s "
                     "(--header-timeout-s)")

    class GuardedH11Protocol(H11Protocol):
        """uvicorn's h11 protocol, with at most ``max_connections`` open and a deadline for each request's headers."""

        waiting_since: float | None = None
        _deadline: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                waiting = [p for p in self.connections if p is not self and getattr(p, "waiting_since", None) is not None]
                if not waiting:
                    self._close_with(busy)
                    return
                min(waiting, key=lambda p: p.waiting_since)._close_with(evicted)
            self._await_request()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.waiting_since is not None and self.conn.their_state is not h11.IDLE:
                self._stop_waiting()  # the headers are in (or the request was refused and the connection closes)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._await_request()  # keep-alive: the next request's headers get the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def _await_request(self) -> None:
            self._stop_waiting()
            self.waiting_since = self.loop.time()
            self._deadline = self.loop.call_later(header_timeout_s, self._headers_late)

        def _stop_waiting(self) -> None:
            self.waiting_since = None
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _headers_late(self) -> None:
            self._deadline = None
            if self.waiting_since is not None:
                self._close_with(late)

        def _close_with(self, answer: bytes) -> None:
            self._stop_waiting()
            if not self.transport.is_closing():
                self.transport.write(answer)
                self.transport.close()

    return GuardedH11Protocol
