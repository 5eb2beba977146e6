"""Which experts and which expert settings a client of the server may choose.

A client names an installed expert (:func:`check_expert_name`, the one place the server
validates expert names) and may set only the harmless, bounded fields of
:data:`CLIENT_FIELDS`. Everything else (weights and other paths, backbones, devices, threads,
batch sizes, architectures) is the operator's, set at start-up with ``--expert-config``: a
client cannot make the server open a file, or hold the model lock with a huge model or size.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from myriad.serve.errors import NotFoundError, ServeError
from myriad.serve.limits import clip

__all__ = ["CLIENT_FIELDS", "FieldRule", "check_expert_name", "client_config"]

_EXPERT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class FieldRule:
    """What a client may give for one expert setting: a type and bounds, or a set of choices."""

    kind: type
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    max_chars: int = 64

    def check(self, key: str, value: Any) -> Any:
        """``value`` if it obeys the rule, else a 422 :class:`ServeError` naming ``key``."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ServeError(f"config.{key}: must be true or false", status=422)
            return value
        if self.kind in (int, float):
            number_ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number_ok or (self.kind is int and not float(value).is_integer()) or not math.isfinite(value):
                raise ServeError(f"config.{key}: must be {'an integer' if self.kind is int else 'a number'}", status=422)
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                raise ServeError(f"config.{key}: {clip(str(value), 20)} is outside {self.low:g} to {self.high:g} "
                                 "(the server's limit for clients)", status=422)
            return int(value) if self.kind is int else float(value)
        if not isinstance(value, str):
            raise ServeError(f"config.{key}: must be a string", status=422)
        if self.choices and value not in self.choices:
            raise ServeError(f"config.{key}: {clip(value)!r} is not one of {', '.join(self.choices)}", status=422)
        if len(value) > self.max_chars or not value.isprintable() or "/" in value or "\\" in value:
            raise ServeError(f"config.{key}: at most {self.max_chars} printable characters, no slashes", status=422)
        return value


#: The expert settings a server client may set, with their bounds (used only where the expert has the field).
CLIENT_FIELDS: dict[str, FieldRule] = {
    "mode": FieldRule(str, choices=("zero_shot", "few_shot", "one_class")),
    "image_size": FieldRule(int, 32, 512),
    "k_shot": FieldRule(int, 1, 64),
    "num_neighbors": FieldRule(int, 1, 16),
    "blur_sigma": FieldRule(float, 0.0, 16.0),
    "coreset_ratio": FieldRule(float, 0.001, 1.0),
    "augment": FieldRule(str, choices=("none", "flip", "rotate", "flip_rotate")),
    "aggregation": FieldRule(str, choices=("concat", "pool")),
    "distance": FieldRule(str, choices=("squared", "euclidean")),
    "reweight": FieldRule(bool),
    "topmin": FieldRule(float, 0.01, 1.0),
    "class_name": FieldRule(str, max_chars=64),
    "progress": FieldRule(bool),
}


def check_expert_name(name: str | None, default: str) -> str:
    """The installed expert a client asked for (``default`` when none); 422 if malformed, 404 if not installed."""
    from myriad.errors import UnknownExpertError
    from myriad.plugins import get_expert_info

    name = (name or "").strip() or default
    if not _EXPERT_NAME.match(name):
        raise ServeError(f"expert {clip(name, 40)!r}: not an expert name (lower-case letters, digits, '._-')", status=422)
    try:
        get_expert_info(name)
    except UnknownExpertError as exc:
        raise NotFoundError(str(exc)) from None
    return name


def client_config(expert: str, settings: Mapping[str, Any], operator: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The expert config of a client's request: the operator's settings, then the client's allowed ones.

    Raises a 422 :class:`ServeError` naming the first field a client may not set, or one out of bounds.
    """
    from myriad.plugins import get_expert_info

    known = get_expert_info(expert).config.model_fields
    config = dict(operator or {})
    for key, value in settings.items():
        rule = CLIENT_FIELDS.get(key)
        if rule is None or key not in known:
            allowed = ", ".join(k for k in CLIENT_FIELDS if k in known)
            raise ServeError(
                f"config.{clip(str(key), 40)}: not a setting clients may choose for expert {expert!r} "
                f"(allowed: {allowed}; the operator sets the others with --expert-config)",
                status=422,
            )
        config[key] = rule.check(key, value)
    return config
