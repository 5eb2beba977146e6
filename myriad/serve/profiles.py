"""The thread-safe store of fitted inspection profiles and chat sessions.

A *profile* is a named, fitted :class:`~myriad.inspection.Inspector` (an expert calibrated on
normal images). A *session* is one inspected image: its result, its overlay and the conversation
of follow-up questions about it. Both are kept in memory, most recently used last; past the
capacity the least recently used one is dropped.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from myriad.serve.errors import NotFoundError, ServeError

_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_profile_name(name: str) -> str:
    """``name`` if it is a valid profile name (letters, digits, ``._-``, at most 64), else a 422 error."""
    if not _PROFILE_NAME.match(name):
        raise ServeError(
            f"invalid profile name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            status=422,
        )
    return name


@dataclass
class Profile:
    """A fitted inspector under a name."""

    name: str
    expert: str
    config: dict[str, Any]
    mode: str
    num_normal: int
    inspector: Any = field(repr=False)
    fit_ms: float = 0.0
    created: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        """The JSON description of the profile (the inspector left out)."""
        return {
            "name": self.name,
            "expert": self.expert,
            "config": self.config,
            "mode": self.mode,
            "num_normal": self.num_normal,
            "fit_ms": round(self.fit_ms, 2),
            "created": self.created,
        }


@dataclass
class Session:
    """One inspected image with its overlay and the conversation about it."""

    id: str
    profile: str
    result: Any = field(repr=False)
    overlay_png: bytes = field(repr=False)
    inspector: Any = field(repr=False)
    conversation: Any = field(default=None, repr=False)
    turns: list[tuple[str, str]] = field(default_factory=list)

    @staticmethod
    def new_id() -> str:
        """A fresh, unguessable session id."""
        return uuid.uuid4().hex


class ProfileStore:
    """Profiles by name and sessions by id, safe to use from many threads at once."""

    def __init__(self, max_profiles: int = 32, max_sessions: int = 128) -> None:
        if max_profiles < 1 or max_sessions < 1:
            raise ValueError("max_profiles and max_sessions must be at least 1")
        self.max_profiles = max_profiles
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._profiles: OrderedDict[str, Profile] = OrderedDict()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    # -- profiles ---------------------------------------------------------------------
    def put_profile(self, profile: Profile) -> list[str]:
        """Add or replace a profile; returns the names dropped to stay within capacity."""
        check_profile_name(profile.name)
        with self._lock:
            self._profiles.pop(profile.name, None)
            self._profiles[profile.name] = profile
            dropped = []
            while len(self._profiles) > self.max_profiles:
                name, _ = self._profiles.popitem(last=False)
                dropped.append(name)
            return dropped

    def get_profile(self, name: str) -> Profile:
        """The profile ``name``; a 404 error lists the fitted ones."""
        with self._lock:
            profile = self._profiles.get(name)
            if profile is None:
                known = ", ".join(self._profiles) or "none (fit one first: POST /api/profiles/{name})"
                raise NotFoundError(f"unknown profile {name!r}; fitted profiles: {known}")
            self._profiles.move_to_end(name)
            return profile

    def list_profiles(self) -> list[Profile]:
        """Every profile, least recently used first."""
        with self._lock:
            return list(self._profiles.values())

    def delete_profile(self, name: str) -> None:
        """Forget profile ``name`` (its sessions keep working until they are dropped)."""
        with self._lock:
            if self._profiles.pop(name, None) is None:
                raise NotFoundError(f"unknown profile {name!r}")

    # -- sessions ---------------------------------------------------------------------
    def add_session(self, session: Session) -> None:
        """Keep a new session, dropping the least recently used past capacity."""
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)

    def get_session(self, session_id: str) -> Session:
        """The session ``session_id``; 404 if unknown or dropped."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise NotFoundError(
                    f"unknown session {session_id!r}: inspect an image first (sessions past the last "
                    f"{self.max_sessions} are dropped)"
                )
            self._sessions.move_to_end(session_id)
            return session

    def list_sessions(self) -> list[Session]:
        """Every session, least recently used first."""
        with self._lock:
            return list(self._sessions.values())

    def delete_session(self, session_id: str) -> None:
        """Forget a session."""
        with self._lock:
            if self._sessions.pop(session_id, None) is None:
                raise NotFoundError(f"unknown session {session_id!r}")

    def counts(self) -> dict[str, int]:
        """How many profiles and sessions are held."""
        with self._lock:
            return {"profiles": len(self._profiles), "sessions": len(self._sessions)}
