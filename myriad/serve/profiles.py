"""The thread-safe store of fitted inspection profiles and chat sessions, owned per client, bounded in count and bytes.

A *profile* is a named, fitted :class:`~myriad.inspection.Inspector` (an expert calibrated on
normal images). A *session* is one inspected image: its result, its overlay and the conversation
of follow-up questions about it; it holds no model (a refit or deleted profile is freed at once).
Both belong to the client (*owner*, ``"<principal>/<client id>"``) that made them: other clients
neither see, use, overwrite nor delete them. Quotas are per *principal*, the token a request
authenticated with (the part before ``/``), never per client id: a client chooses its id, not its
token. Each principal has a quota of items and of bytes (:mod:`myriad.serve.memory`); past it, its
own least recently used items are dropped. When the whole server is full (in count or in bytes),
the principal's own items go first, then items of others idle for longer than ``idle_s``; otherwise
the request is refused (429), so no principal can push out another's recent work.

*Preloaded* profiles (``myriad serve --profile NAME=PROFILE``, fitted with ``myriad fit``) belong to
the operator: every client sees and uses them, none may refit or delete them, and they count in no
quota.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from myriad.serve.errors import BusyError, ConflictError, NotFoundError, ServeError, TooLargeError
from myriad.serve.limits import clip, human_bytes

_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_profile_name(name: str) -> str:
    """``name`` if it is a valid profile name (letters, digits, ``._-``, at most 64), else a 422 error."""
    if not _PROFILE_NAME.match(name):
        raise ServeError(
            f"invalid profile name {clip(name, 40)!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            status=422,
        )
    return name


def principal_of(owner: str) -> str:
    """The principal (the token's label) of an owner ``"<principal>/<client id>"``: what quotas count by."""
    return owner.partition("/")[0]


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
    owner: str = "local/default"
    last_used: float = field(default_factory=time.monotonic, repr=False)
    #: loaded from a profile folder by the operator (``--profile``): shared by every client, read-only
    preloaded: bool = False
    #: bytes the fitted state holds (arrays and tensors; shared models left out), see :mod:`myriad.serve.memory`
    nbytes: int = 0

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
            "preloaded": self.preloaded,
            "false_alarm_rate": getattr(getattr(self.inspector, "detector", None), "false_alarm_rate", None),
        }


@dataclass
class Session:
    """One inspected image with its overlay and the conversation about it.

    ``follow`` answers follow-ups: an inspector without a fitted expert (the shared LMM, the answer route and the
    profile's false-alarm rate), so that a session never keeps its profile's model alive.
    """

    id: str
    profile: str
    result: Any = field(repr=False)
    overlay_png: bytes = field(repr=False)
    follow: Any = field(repr=False)
    conversation: Any = field(default=None, repr=False)
    turns: list[tuple[str, str]] = field(default_factory=list)
    owner: str = "local/default"
    last_used: float = field(default_factory=time.monotonic, repr=False)
    #: bytes the session holds: image, maps, overlay PNG and the conversation (see :mod:`myriad.serve.memory`)
    nbytes: int = 0

    @staticmethod
    def new_id() -> str:
        """A fresh, unguessable session id (uuid4: 122 random bits)."""
        return uuid.uuid4().hex


class _OwnedLRU:
    """Items by key, least recently used first, each with an ``owner``, a ``last_used`` time and ``nbytes``."""

    def __init__(self, what: str, capacity: int, per_principal: int, idle_s: float) -> None:
        self.what, self.capacity, self.per_principal, self.idle_s = what, capacity, per_principal, idle_s
        self.items: OrderedDict[Any, Any] = OrderedDict()

    def owned(self, owner: str) -> list[Any]:
        return [k for k, v in self.items.items() if v.owner == owner]

    def of_principal(self, principal: str) -> list[Any]:
        return [k for k, v in self.items.items() if principal_of(v.owner) == principal]

    def idle_of_others(self, principal: str) -> list[Any]:
        now = time.monotonic()
        return [k for k, v in self.items.items() if principal_of(v.owner) != principal and now - v.last_used > self.idle_s]

    def victims(self, owner: str, replacing: Any = None) -> list[Any]:
        """Keys to drop so that one more item of ``owner`` fits in count; raises :class:`BusyError` when none may go."""
        principal = principal_of(owner)
        mine = [k for k in self.of_principal(principal) if k != replacing]
        present = replacing in self.items
        drop: list[Any] = []
        if not present and len(mine) >= self.per_principal:
            drop.append(mine[0])
        total = len(self.items) - len(drop) + (0 if present else 1)
        if total > self.capacity:
            candidates = [k for k in mine if k not in drop]
            if candidates:
                drop.append(candidates[0])
            else:
                idle = self.idle_of_others(principal)
                if not idle:
                    raise BusyError(
                        f"the server holds its maximum of {self.capacity} {self.what} (--max-{self.what}), all recently "
                        "used by other clients; try again later or delete some of yours"
                    )
                drop.append(idle[0])
        return drop

    def get(self, key: Any, owner: str) -> Any:
        item = self.items.get(key)
        if item is None or item.owner != owner:
            return None
        item.last_used = time.monotonic()
        self.items.move_to_end(key)
        return item


class ProfileStore:
    """Profiles by (owner, name) and sessions by id, safe to use from many threads at once.

    ``max_profiles`` / ``max_sessions`` bound the whole server in count and ``max_bytes`` in the bytes
    profiles and sessions hold together; ``per_client_profiles`` / ``per_client_sessions`` /
    ``per_client_bytes`` bound each principal (a token; default: a quarter of the total, at least 1).
    ``idle_s`` is how long an item must be unused before another principal's request may drop it.
    """

    def __init__(
        self,
        max_profiles: int = 32,
        max_sessions: int = 128,
        per_client_profiles: int | None = None,
        per_client_sessions: int | None = None,
        idle_s: float = 1800.0,
        max_bytes: int = 2048 * 1024 * 1024,
        per_client_bytes: int | None = None,
    ) -> None:
        if max_profiles < 1 or max_sessions < 1 or max_bytes < 1:
            raise ValueError("max_profiles, max_sessions and max_bytes must be at least 1")
        per_profiles = per_client_profiles or max(1, max_profiles // 4)
        per_sessions = per_client_sessions or max(1, max_sessions // 4)
        per_bytes = per_client_bytes or max(1, max_bytes // 4)
        if per_profiles < 1 or per_sessions < 1 or per_bytes < 1:
            raise ValueError("per-client quotas must be at least 1")
        self.max_profiles = max_profiles
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self.per_client_bytes = min(per_bytes, max_bytes)
        self._lock = threading.Lock()
        self._profiles = _OwnedLRU("profiles", max_profiles, min(per_profiles, max_profiles), idle_s)
        self._preloaded: dict[str, Profile] = {}
        self._sessions = _OwnedLRU("sessions", max_sessions, min(per_sessions, max_sessions), idle_s)

    @property
    def per_client_sessions(self) -> int:
        """Sessions one principal may hold."""
        return self._sessions.per_principal

    # -- bytes ------------------------------------------------------------------------
    def _byte_victims(self, item: Any, pool: _OwnedLRU, key: Any, dropping: list[Any]) -> list[tuple[_OwnedLRU, Any]]:
        """(pool, key) of the items to drop, besides ``dropping`` (of ``pool``), so that ``item`` fits in bytes.

        The principal's own least recently used sessions go first, then its own profiles; past its own
        share only its own items go; for the whole budget, then other principals' idle sessions and
        profiles. Raises :class:`TooLargeError` for an item over a principal's share on its own, and
        :class:`BusyError` when what is left is other principals' recent work.
        """
        principal = principal_of(item.owner)
        gone = {(id(pool), k) for k in [*dropping, key]}
        pools = (self._sessions, self._profiles)
        live = [(p, k, v) for p in pools for k, v in p.items.items() if (id(p), k) not in gone]
        if item.nbytes > self.per_client_bytes:
            raise TooLargeError(
                f"the {pool.what[:-1]} holds {human_bytes(item.nbytes)}; one client may keep at most "
                f"{human_bytes(self.per_client_bytes)} (--per-client-memory-mb)"
            )
        own = [(p, k) for p, k, v in live if principal_of(v.owner) == principal]
        own.sort(key=lambda pk: pools.index(pk[0]))  # sessions before profiles, each least recently used first
        drop: list[tuple[_OwnedLRU, Any]] = []

        def held(mine_only: bool) -> int:
            dropped = {(id(p), k) for p, k in drop}
            return sum(v.nbytes for p, k, v in live if (id(p), k) not in dropped
                       and (not mine_only or principal_of(v.owner) == principal))

        while held(True) + item.nbytes > self.per_client_bytes:
            drop.append(own.pop(0))  # own items exist: the item alone fits the share
        others = [(p, k) for p in pools for k in p.idle_of_others(principal) if (id(p), k) not in gone]
        candidates = [pk for pk in own if pk not in drop] + others
        while held(False) + item.nbytes > self.max_bytes:
            if not candidates:
                raise BusyError(
                    f"the server's memory budget of {human_bytes(self.max_bytes)} (--max-memory-mb) is held by other "
                    "clients' recent profiles and sessions; try again later or delete some of yours"
                )
            drop.append(candidates.pop(0))
        return drop

    def _put(self, pool: _OwnedLRU, key: Any, item: Any) -> list[Any]:
        """Keep ``item`` under ``key`` in ``pool`` (under the lock), dropping what the count and byte limits need;
        returns the dropped keys of ``pool``."""
        drop = pool.victims(item.owner, key)
        extra = self._byte_victims(item, pool, key, drop)
        for k in drop:
            pool.items.pop(k, None)
        for p, k in extra:
            p.items.pop(k, None)
        pool.items.pop(key, None)
        pool.items[key] = item
        return drop + [k for p, k in extra if p is pool]

    # -- profiles ---------------------------------------------------------------------
    def check_room(self, owner: str, name: str) -> None:
        """Raise :class:`BusyError` now if a profile ``name`` of ``owner`` could not be kept (before fitting it)."""
        with self._lock:
            self._refuse_preloaded(name, "refitted")
            self._profiles.victims(owner, (owner, name))

    def preload(self, profile: Profile) -> None:
        """Keep an operator's profile, shared by every client (read-only, outside every quota)."""
        check_profile_name(profile.name)
        profile.preloaded = True
        with self._lock:
            self._preloaded[profile.name] = profile

    def _refuse_preloaded(self, name: str, doing: str) -> None:
        if name in self._preloaded:
            raise ConflictError(f"profile {clip(name, 64)!r} is preloaded by the server's operator: it cannot be {doing}; "
                                "choose another name")

    def put_profile(self, profile: Profile) -> list[str]:
        """Add or replace a profile of ``profile.owner``; returns the names of that owner's profiles dropped.

        Raises :class:`BusyError` (429) when the server is full of other clients' recent profiles (in count or
        bytes), :class:`TooLargeError` (413) for a profile over a client's byte share, and
        :class:`ConflictError` (409) for the name of a preloaded profile.
        """
        check_profile_name(profile.name)
        with self._lock:
            self._refuse_preloaded(profile.name, "refitted")
            dropped = self._put(self._profiles, (profile.owner, profile.name), profile)
        return [name for owner, name in dropped if owner == profile.owner]

    def get_profile(self, name: str, owner: str = "local/default") -> Profile:
        """The profile ``name`` of ``owner``; a 404 error lists that owner's fitted ones."""
        with self._lock:
            profile = self._profiles.get((owner, name), owner) or self._preloaded.get(name)
            if profile is None:
                names = [*self._preloaded, *(n for _, n in self._profiles.owned(owner))]
                known = ", ".join(names) or "none (fit one first: POST /api/profiles/{name})"
                raise NotFoundError(f"unknown profile {clip(name, 64)!r}; your fitted profiles: {known}")
            return profile

    def list_profiles(self, owner: str | None = None) -> list[Profile]:
        """The preloaded profiles, then those of ``owner`` (every client's when None), least recently used first."""
        with self._lock:
            return [*self._preloaded.values(), *(p for p in self._profiles.items.values() if owner is None or p.owner == owner)]

    def delete_profile(self, name: str, owner: str = "local/default") -> None:
        """Forget profile ``name`` of ``owner`` (its sessions keep their results and answers; they hold no model)."""
        with self._lock:
            if self._profiles.get((owner, name), owner) is None:
                self._refuse_preloaded(name, "deleted")
                raise NotFoundError(f"unknown profile {clip(name, 64)!r}")
            del self._profiles.items[(owner, name)]

    # -- sessions ---------------------------------------------------------------------
    def add_session(self, session: Session) -> None:
        """Keep a new session of ``session.owner``, dropping that principal's least recently used past its quota.

        Raises :class:`BusyError` (429) when the server is full of other clients' recent sessions (in count or bytes).
        """
        with self._lock:
            self._put(self._sessions, session.id, session)

    def resize_session(self, session: Session, nbytes: int) -> None:
        """Record that ``session`` now holds ``nbytes`` (its conversation grew); bounded by the turn limit."""
        with self._lock:
            session.nbytes = nbytes

    def get_session(self, session_id: str, owner: str = "local/default") -> Session:
        """The session ``session_id`` of ``owner``; 404 if unknown, another client's, or dropped."""
        with self._lock:
            session = self._sessions.get(session_id, owner)
            if session is None:
                raise NotFoundError(
                    f"unknown session {clip(session_id, 40)!r}: inspect an image first (each client keeps its "
                    f"last {self._sessions.per_principal} sessions)"
                )
            return session

    def list_sessions(self, owner: str | None = None) -> list[Session]:
        """The sessions of ``owner`` (every session when None), least recently used first."""
        with self._lock:
            return [s for s in self._sessions.items.values() if owner is None or s.owner == owner]

    def delete_session(self, session_id: str, owner: str = "local/default") -> None:
        """Forget a session of ``owner``."""
        with self._lock:
            if self._sessions.get(session_id, owner) is None:
                raise NotFoundError(f"unknown session {clip(session_id, 40)!r}")
            del self._sessions.items[session_id]

    def counts(self) -> dict[str, int]:
        """How many profiles and sessions are held (all clients), and the bytes they hold."""
        with self._lock:
            return {
                "profiles": len(self._profiles.items) + len(self._preloaded),
                "sessions": len(self._sessions.items),
                "profile_bytes": sum(p.nbytes for p in [*self._profiles.items.values(), *self._preloaded.values()]),
                "session_bytes": sum(s.nbytes for s in self._sessions.items.values()),
                "max_memory_bytes": self.max_bytes,
            }
