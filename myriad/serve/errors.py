"""Errors of the server; each carries the HTTP status it is answered with."""

from __future__ import annotations

from myriad.errors import MyriadError


class ServeError(MyriadError):
    """A request the server refuses; ``status`` is the HTTP status code of the answer."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFoundError(ServeError):
    """An unknown profile or session."""

    status = 404


class TooLargeError(ServeError):
    """An upload over the byte limit, or too many files."""

    status = 413


class BadImageError(ServeError):
    """An upload that is not a readable image, or whose dimensions are over the limits."""

    status = 422


class ConflictError(ServeError):
    """A request the server's state does not allow (e.g. a follow-up without the LMM)."""

    status = 409


class ForbiddenError(ServeError):
    """A server-side path outside the allowed data root, or folders disabled."""

    status = 403


class BusyError(ServeError):
    """The server holds as many profiles or sessions as it may, all of other clients and recently used."""

    status = 429


def status_of(exc: MyriadError) -> int:
    """The HTTP status for any Myriad error: a ServeError's own, 422 for the core's input errors."""
    from myriad.errors import UnknownExpertError

    if isinstance(exc, ServeError):
        return exc.status
    if isinstance(exc, UnknownExpertError):
        return 404
    return 422

