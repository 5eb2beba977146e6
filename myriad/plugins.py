"""The plugin host: finds experts through the ``myriad`` entry-point group.

Plugins load lazily, once per process. ``MYRIAD_LOAD_PLUGINS`` (comma-separated
distribution names) restricts which installed plugins load; set it to the empty
string to load none. A plugin that fails to import is recorded in
:func:`plugin_errors` and does not stop the others.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pluggy

from myriad import hookspecs
from myriad.errors import ConfigError, MyriadError, UnknownExpertError
from myriad.experts import Expert, ExpertInfo, Mode

ENV_LOAD_PLUGINS = "MYRIAD_LOAD_PLUGINS"


@dataclass(frozen=True)
class PluginError:
    """A plugin that could not be loaded: its distribution, entry point and the error."""

    distribution: str
    entry_point: str
    error: str


pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
pm.add_hookspecs(hookspecs)

_lock = threading.RLock()
_loaded = False
_errors: list[PluginError] = []
_plugin_dist: dict[int, tuple[str | None, str | None]] = {}


def _allowed_distributions() -> set[str] | None:
    value = os.environ.get(ENV_LOAD_PLUGINS)
    if value is None:
        return None
    return {_normalise(name) for name in value.split(",") if name.strip()}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def load_plugins() -> None:
    """Load every allowed entry point of the ``myriad`` group (once per process)."""
    global _loaded
    with _lock:
        if _loaded:
            return
        _loaded = True
        from importlib.metadata import entry_points

        allowed = _allowed_distributions()
        for ep in entry_points(group=hookspecs.PROJECT_NAME):
            dist = ep.dist
            dist_name = dist.metadata["Name"] if dist is not None else ep.module
            if allowed is not None and _normalise(dist_name) not in allowed:
                continue
            try:
                module = ep.load()
                pm.register(module, name=f"{dist_name}:{ep.name}")
            except Exception as exc:  # noqa: BLE001 - any plugin failure is reported, not fatal
                _errors.append(PluginError(dist_name, ep.name, f"{type(exc).__name__}: {exc}"))
                continue
            _plugin_dist[id(module)] = (dist_name, dist.version if dist is not None else None)


def plugin_errors() -> list[PluginError]:
    """Plugins that failed to load, with their error."""
    load_plugins()
    return list(_errors)


def register_plugin(plugin: Any, name: str | None = None, distribution: str | None = None) -> None:
    """Register an in-process plugin object or module (tests, notebooks, built-ins)."""
    with _lock:
        pm.register(plugin, name=name)
        _plugin_dist[id(plugin)] = (distribution or name or getattr(plugin, "__name__", "in-process"), None)


def unregister_plugin(name_or_plugin: Any) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    with _lock:
        plugin = pm.get_plugin(name_or_plugin) if isinstance(name_or_plugin, str) else name_or_plugin
        if plugin is not None:
            pm.unregister(plugin)
            _plugin_dist.pop(id(plugin), None)


def _collect() -> dict[str, ExpertInfo]:
    load_plugins()
    experts: dict[str, ExpertInfo] = {}
    for impl in pm.hook.register_experts.get_hookimpls():
        dist_name, version = _plugin_dist.get(id(impl.plugin), (impl.plugin_name, None))

        def register(
            name: str,
            *,
            factory: Callable[..., Expert] | str,
            config: type,
            modes: Sequence[Mode | str],
            description: str,
            transductive: bool = False,
            _dist: str | None = dist_name,
            _version: str | None = version,
        ) -> None:
            try:
                parsed = tuple(Mode(m) for m in modes)
            except ValueError as exc:
                raise MyriadError(f"plugin {_dist}: expert {name!r} declares an unknown mode: {exc}") from exc
            if not parsed:
                raise MyriadError(f"plugin {_dist}: expert {name!r} declares no modes")
            if name in experts:
                other = experts[name].distribution
                raise MyriadError(f"expert name {name!r} is registered twice: by {other} and by {_dist}")
            experts[name] = ExpertInfo(
                name=name,
                factory=factory,
                config=config,
                modes=parsed,
                description=description,
                transductive=transductive,
                distribution=_dist,
                version=_version,
            )

        try:
            impl.function(register=register)
        except MyriadError:
            raise
        except Exception as exc:  # noqa: BLE001
            _errors.append(PluginError(str(dist_name), impl.plugin_name, f"register_experts failed: {exc}"))
    return experts


def list_experts() -> list[ExpertInfo]:
    """Every installed (and allowed) expert, sorted by name."""
    with _lock:
        return sorted(_collect().values(), key=lambda info: info.name)


def get_expert_info(name: str) -> ExpertInfo:
    """The registration of expert ``name``; the error lists the installed ones."""
    experts = {info.name: info for info in list_experts()}
    if name not in experts:
        installed = ", ".join(sorted(experts)) or "none"
        hint = ""
        if not experts:
            hint = " (install a plugin, e.g. `pip install ./myriad_experts_patchcore`"
            hint += f"; is {ENV_LOAD_PLUGINS} set?)" if ENV_LOAD_PLUGINS in os.environ else ")"
        raise UnknownExpertError(f"unknown expert {name!r}; installed experts: {installed}{hint}")
    return experts[name]


def get_expert(name: str, config: Any = None, **overrides: Any) -> Expert:
    """Build expert ``name`` from a config (model instance, dict or None) plus overrides."""
    from pydantic import BaseModel, ValidationError

    info = get_expert_info(name)
    try:
        if isinstance(config, BaseModel):
            cfg = config.model_copy(update=overrides) if overrides else config
            cfg = info.config.model_validate(cfg.model_dump())
        else:
            cfg = info.config.model_validate({**(config or {}), **overrides})
    except ValidationError as exc:
        raise ConfigError(f"invalid config for expert {name!r}:\n{exc}") from exc
    factory = info.load_factory()
    return factory(cfg)


def _reset_for_tests() -> None:
    """Forget loaded entry points (tests use this to re-read MYRIAD_LOAD_PLUGINS)."""
    global _loaded
    with _lock:
        for name, plugin in list(pm.list_name_plugin()):
            if name and ":" in name and plugin is not None and getattr(plugin, "__name__", "") in sys.modules:
                pm.unregister(plugin)
        _errors.clear()
        _loaded = False
