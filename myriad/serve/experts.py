"""Which experts and which expert settings a client of the server may choose.

A client names an installed expert (:func:`check_expert_name`, the one place the server
validates expert names) and may set only the harmless, bounded fields of
:data:`CLIENT_FIELDS`. Everything else (weights and other paths, backbones, devices, threads,
batch sizes, architectures) is the operator's, set at start-up with ``--expert-config``: a
client cannot make the server open a file, or hold the model lock with a huge model or size.

A fused expert (``"patchcore+global"``, :mod:`myriad.fusion`) is named like one expert; its
settings are given per member (``{"patchcore": {...}, "global": {...}}``) and the allow-list
applies to each member, as does the operator's ``--expert-config`` (:func:`operator_config`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from myriad.serve.errors import NotFoundError, ServeError
from myriad.serve.limits import clip

__all__ = [
    "CLIENT_FIELDS", "MAX_MEMBERS", "FieldRule", "check_expert_name", "check_operator_config", "client_config",
    "operator_config",
]

_EXPERT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: Most members a client's fusion may name.
MAX_MEMBERS = 4


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
    """The installed expert (or fusion, ``"a+b"``) a client asked for, ``default`` when none.

    422 if the name is malformed (or a fusion repeats a member), 404 naming the member that is
    not installed. Every member is checked by :func:`myriad.fusion.member_names`.
    """
    from myriad.errors import ConfigError, UnknownExpertError
    from myriad.fusion import SEPARATOR, is_fused, member_names

    name = (name or "").strip() or default
    parts = [part.strip() for part in name.split(SEPARATOR)]
    if len(parts) > MAX_MEMBERS:
        raise ServeError(f"expert {clip(name, 40)!r}: a fusion of at most {MAX_MEMBERS} experts", status=422)
    for part in parts:
        if not _EXPERT_NAME.match(part):
            raise ServeError(
                f"expert {clip(name, 40)!r}: {clip(part, 40)!r} is not an expert name (lower-case letters, digits, "
                f"'._-'; join the members of a fusion with '{SEPARATOR}')",
                status=422,
            )
    try:
        names = member_names(SEPARATOR.join(parts))
    except UnknownExpertError as exc:
        prefix = f"expert {clip(name, 80)!r}: " if is_fused(name) else ""
        raise NotFoundError(prefix + str(exc)) from None
    except ConfigError as exc:
        raise ServeError(str(exc), status=422) from None
    return SEPARATOR.join(names)


def operator_config(expert: str, operator: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """The operator's settings (``--expert-config``) for ``expert``, in the shape the expert's config takes.

    One expert: ``operator[expert]``. A fusion: for each member, ``operator[member]`` updated with
    ``operator[fusion][member]`` (settings for that member only inside this fusion), as
    ``{member: {...}}``.
    """
    from myriad.fusion import is_fused, member_names

    operator = operator or {}
    if not is_fused(expert):
        return dict(operator.get(expert) or {})
    inside = operator.get(expert) or {}
    return {name: {**(operator.get(name) or {}), **(inside.get(name) or {})} for name in member_names(expert)}


def check_operator_config(operator: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The operator's ``--expert-config`` checked: installed experts (or fusions) mapped to settings objects.

    A fusion's settings are given per member (``{"a+b": {"a": {...}}}``). Raises
    :class:`myriad.errors.ConfigError` / :class:`~myriad.errors.UnknownExpertError` naming the entry.
    """
    from myriad.errors import ConfigError
    from myriad.fusion import is_fused, member_configs, member_names

    checked: dict[str, dict[str, Any]] = {}
    for name, settings in operator.items():
        if not isinstance(settings, Mapping):
            raise ConfigError(f"expert config {name!r}: must be an object of settings, got {type(settings).__name__}")
        if is_fused(name):
            member_configs(name, dict(settings))  # per member, each an object
        else:
            member_names(name)
        checked[name] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in settings.items()}
    return checked


def _member_client_config(expert: str, settings: Mapping[str, Any], base: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One expert's config: ``base`` (the operator's), then the client's allow-listed ``settings``."""
    from myriad.plugins import get_expert_info

    known = get_expert_info(expert).config.model_fields
    config = dict(base)
    for key, value in settings.items():
        rule = CLIENT_FIELDS.get(key)
        field = f"{where}{clip(str(key), 40)}"
        if rule is None or key not in known:
            allowed = ", ".join(k for k in CLIENT_FIELDS if k in known)
            raise ServeError(
                f"{field}: not a setting clients may choose for expert {expert!r} "
                f"(allowed: {allowed}; the operator sets the others with --expert-config)",
                status=422,
            )
        config[key] = rule.check(field.removeprefix("config."), value)
    return config


def client_config(expert: str, settings: Mapping[str, Any], operator: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The expert config of a client's request: the operator's settings, then the client's allowed ones.

    ``operator`` is the operator's config for ``expert`` (:func:`operator_config`). For a fusion,
    ``settings`` gives options per member (``{"patchcore": {...}}``, members left out get none)
    and the allow-list applies to each member. Raises a 422 :class:`ServeError` naming the first
    field a client may not set, or one out of bounds.
    """
    from myriad.fusion import is_fused, member_names

    operator = operator or {}
    if not is_fused(expert):
        return _member_client_config(expert, settings, operator, "config.")
    names = member_names(expert)
    unknown = [str(key) for key in settings if key not in names]
    if unknown:
        raise ServeError(
            f"config.{clip(unknown[0], 40)}: the fused expert {expert!r} takes settings per member, e.g. "
            f'{{"{names[0]}": {{"image_size": 256}}}}; members: {", ".join(names)}',
            status=422,
        )
    config = {}
    for name in names:
        member = settings.get(name, {})
        if not isinstance(member, Mapping):
            raise ServeError(f"config.{name}: must be an object of settings for member {name!r}", status=422)
        config[name] = _member_client_config(name, member, operator.get(name) or {}, f"config.{name}.")
    return config
