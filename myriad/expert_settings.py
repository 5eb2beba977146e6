"""One host rule for an expert's ``mode`` and ``device``: inspect, eval, serve and training all use it.

``mode`` and ``device`` are the two settings the host writes into an expert's config (when its
``Config`` has those fields and the user left them unset); everything else is the user's. The
mode comes from what the host knows about the reference images:

- ``k_shot=K`` (``myriad eval --k-shot K``): few-shot; a config that says another mode, or an
  expert without a few-shot mode, is a one-line error;
- ``num_normal=N`` (``myriad inspect``, ``serve``, the Python ``Inspector``): few-shot when
  N <= :data:`FEW_SHOT_MAX` (or the expert has no one-class mode), else one-class;
- neither (one-class evaluation on a whole training set): one-class, else zero-shot; an expert
  that only works few-shot is an error asking for ``--k-shot``.

``device``: written into the config when the expert has a ``device`` field. ``override=True``
(an explicit ``--device`` of ``eval``) replaces the user's and warns when the expert has no such
field; otherwise (``inspect``'s default device) it only fills an unset one.

A fused expert (``"a+b"``) gets the rule per member (:func:`resolve_config` on each).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from myriad.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from myriad.plugins import ExpertInfo

__all__ = ["FEW_SHOT_MAX", "resolve_config", "resolve_member_config"]

#: Up to this many normal images, an expert with both modes runs few-shot (inspect, serve).
FEW_SHOT_MAX = 16


def resolve_member_config(
    info: "ExpertInfo",
    config: dict[str, Any],
    *,
    k_shot: int | None = None,
    num_normal: int | None = None,
    device: str | None = None,
    override_device: bool = False,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One expert's config with ``mode`` and ``device`` decided by the rules of the module docstring."""
    from myriad.experts import Mode

    fields = getattr(info.config, "model_fields", {})
    config = dict(config)
    if "mode" in fields:
        chosen = config.get("mode")
        if k_shot is not None:
            if chosen not in (None, Mode.FEW_SHOT.value):
                raise ConfigError(f"--k-shot {k_shot} asks for few-shot mode, but --config sets mode={chosen!r}")
            if Mode.FEW_SHOT not in info.modes:
                supported = ", ".join(m.value for m in info.modes)
                raise ConfigError(f"expert {info.name!r} has no few_shot mode (modes: {supported}); drop --k-shot")
            config["mode"] = Mode.FEW_SHOT.value
        elif chosen is None and num_normal is not None:
            if Mode.FEW_SHOT in info.modes and (num_normal <= FEW_SHOT_MAX or Mode.ONE_CLASS not in info.modes):
                config["mode"] = Mode.FEW_SHOT.value
            elif Mode.ONE_CLASS in info.modes:
                config["mode"] = Mode.ONE_CLASS.value
        elif chosen is None:
            if Mode.ONE_CLASS in info.modes:
                config["mode"] = Mode.ONE_CLASS.value
            elif Mode.ZERO_SHOT in info.modes:
                config["mode"] = Mode.ZERO_SHOT.value
            else:
                raise ConfigError(f"expert {info.name!r} only works few-shot: give --k-shot K")
    if device is not None:
        if "device" in fields:
            if override_device or "device" not in config:
                config["device"] = device
        elif override_device and warn is not None:
            warn(f"expert {info.name!r} has no 'device' setting; --device {device} is ignored")
    return config


def resolve_config(expert: str, config: dict[str, Any] | None, **rules: Any) -> dict[str, Any]:
    """:func:`resolve_member_config` for an expert by name, or for each member of a fusion (config per member)."""
    from myriad.fusion import is_fused, member_configs
    from myriad.plugins import get_expert_info

    if is_fused(expert):
        return {name: resolve_member_config(get_expert_info(name), cfg, **rules) for name, cfg in member_configs(expert, config).items()}
    return resolve_member_config(get_expert_info(expert), dict(config or {}), **rules)
