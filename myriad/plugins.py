"""The plugin host: finds experts through the ``myriad`` entry-point group.

Plugins load lazily, once per process. ``MYRIAD_LOAD_PLUGINS`` (comma-separated
distribution names) restricts which installed plugins load; set it to the empty
string to load none.

A broken plugin never hides the others: a plugin that fails to import, whose
``register_experts`` hook raises, or that makes an invalid registration (unknown or no
modes, a bad name or config, the same name twice) registers nothing; an expert name
registered by two plugins is withheld from both. Each problem is recorded once as a
:class:`~myriad.errors.PluginError` (:func:`plugin_errors`); the registrations are
computed once per set of registered plugins, not on every :func:`list_experts` call.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pluggy

from myriad import hookspecs
from myriad.errors import ConfigError, PluginError, UnknownExpertError
from myriad.experts import Expert, ExpertInfo, Mode

__all__ = [
    "ENV_LOAD_PLUGINS",
    "PluginError",
    "get_expert",
    "get_expert_info",
    "list_experts",
    "load_plugins",
    "plugin_errors",
    "register_plugin",
    "unregister_plugin",
]

ENV_LOAD_PLUGINS = "MYRIAD_LOAD_PLUGINS"

pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
pm.add_hookspecs(hookspecs)

_lock = threading.RLock()
_loaded = False
_load_errors: list[PluginError] = []
_plugin_dist: dict[int, tuple[str | None, str | None]] = {}


@dataclass
class _Registry:
    """The outcome of calling every plugin's hook once: experts, refused plugins, contested names."""

    key: tuple[tuple[int, str], ...]
    plugins: list[Any]  # kept alive so the ids in ``key`` cannot be reused while this is cached
    experts: dict[str, ExpertInfo]
    errors: list[PluginError]
    contested: dict[str, list[str]]


_registry: _Registry | None = None


def _allowed_distributions() -> set[str] | None:
    value = os.environ.get(ENV_LOAD_PLUGINS)
    if value is None:
        return None
    return {_normalise(name) for name in value.split(",") if name.strip()}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def load_plugins() -> None:
    """Load every allowed entry point of the ``myriad`` group (once per process)."""
    global _loaded, _registry
    with _lock:
        if _loaded:
            return
        _loaded = True
        _registry = None
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
                _load_errors.append(PluginError(dist_name, ep.name, f"failed to load: {type(exc).__name__}: {exc}"))
                continue
            _plugin_dist[id(module)] = (dist_name, dist.version if dist is not None else None)


def plugin_errors() -> list[PluginError]:
    """Plugins that failed to load or whose registrations were refused, each once."""
    with _lock:
        return [*_load_errors, *_current_registry().errors]


def register_plugin(plugin: Any, name: str | None = None, distribution: str | None = None) -> None:
    """Register an in-process plugin object or module (tests, notebooks, built-ins)."""
    global _registry
    with _lock:
        pm.register(plugin, name=name)
        _plugin_dist[id(plugin)] = (distribution or name or getattr(plugin, "__name__", "in-process"), None)
        _registry = None


def unregister_plugin(name_or_plugin: Any) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    global _registry
    with _lock:
        plugin = pm.get_plugin(name_or_plugin) if isinstance(name_or_plugin, str) else name_or_plugin
        if plugin is not None:
            pm.unregister(plugin)
            _plugin_dist.pop(id(plugin), None)
        _registry = None


def _check_registration(
    name: Any, factory: Any, config: Any, modes: Any, description: Any
) -> tuple[Mode, ...]:
    """The parsed modes of one ``register`` call; ``ValueError`` saying what is wrong otherwise."""
    if not isinstance(name, str) or not name or name != name.strip() or any(c.isspace() for c in name):
        raise ValueError(f"expert name {name!r} must be a non-empty string without spaces")
    if isinstance(modes, str) or not isinstance(modes, Sequence):
        raise ValueError(f"expert {name!r}: modes must be a list of {[m.value for m in Mode]}, got {modes!r}")
    valid = {m.value for m in Mode}
    unknown = [m for m in modes if (m.value if isinstance(m, Mode) else m) not in valid]
    if unknown:
        raise ValueError(f"expert {name!r} declares an unknown mode {unknown[0]!r} (choose from {sorted(valid)})")
    if not modes:
        raise ValueError(f"expert {name!r} declares no modes")
    if not (isinstance(config, type) and callable(getattr(config, "model_validate", None))):
        raise ValueError(f"expert {name!r}: config must be a pydantic BaseModel subclass, got {config!r}")
    if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
        raise ValueError(f"expert {name!r}: factory must be an Expert subclass or a 'module:attr' string, got {factory!r}")
    if not isinstance(description, str) or "\n" in description:
        raise ValueError(f"expert {name!r}: description must be one line of text")
    return tuple(Mode(m) for m in modes)


def _call_plugin(impl: Any, dist_name: str, version: str | None) -> dict[str, ExpertInfo]:
    """One plugin's registrations; raises whatever its hook or an invalid registration raised."""
    own: dict[str, ExpertInfo] = {}

    def register(
        name: str,
        *,
        factory: Callable[..., Expert] | str,
        config: type,
        modes: Sequence[Mode | str],
        description: str,
        transductive: bool = False,
    ) -> None:
        parsed = _check_registration(name, factory, config, modes, description)
        if name in own:
            raise ValueError(f"expert name {name!r} is registered twice by this plugin")
        own[name] = ExpertInfo(
            name=name,
            factory=factory,
            config=config,
            modes=parsed,
            description=description,
            transductive=bool(transductive),
            distribution=dist_name,
            version=version,
        )

    impl.function(register=register)
    return own


def _register_all(impls: list[Any]) -> _Registry:
    """Call every plugin's hook, each isolated from the others."""
    experts: dict[str, ExpertInfo] = {}
    owners: dict[str, list[tuple[str, str]]] = {}
    errors: list[PluginError] = []
    for impl in impls:
        dist_name, version = _plugin_dist.get(id(impl.plugin), (impl.plugin_name, None))
        dist_name = str(dist_name or impl.plugin_name)
        try:
            own = _call_plugin(impl, dist_name, version)
        except Exception as exc:  # noqa: BLE001 - a broken plugin registers nothing and hides nobody
            errors.append(PluginError(dist_name, impl.plugin_name, f"register_experts failed: {type(exc).__name__}: {exc}"))
            continue
        for name, info in own.items():
            owners.setdefault(name, []).append((dist_name, impl.plugin_name))
            experts.setdefault(name, info)
    contested = {name: [d for d, _ in regs] for name, regs in owners.items() if len(regs) > 1}
    for name, regs in owners.items():
        if len(regs) < 2:
            continue
        experts.pop(name, None)
        for dist_name, entry_point in regs:
            others = ", ".join(d for d, ep in regs if (d, ep) != (dist_name, entry_point))
            errors.append(PluginError(dist_name, entry_point, f"expert name {name!r} is also registered by {others}; neither is used"))
    key = tuple((id(impl.plugin), impl.plugin_name) for impl in impls)
    return _Registry(key, [impl.plugin for impl in impls], experts, errors, contested)


def _current_registry() -> _Registry:
    """The cached registrations, recomputed only when the set of registered plugins changed."""
    global _registry
    load_plugins()
    with _lock:
        impls = list(pm.hook.register_experts.get_hookimpls())
        key = tuple((id(impl.plugin), impl.plugin_name) for impl in impls)
        if _registry is None or _registry.key != key:
            _registry = _register_all(impls)
        return _registry


def list_experts() -> list[ExpertInfo]:
    """Every installed (and allowed) expert, sorted by name; broken plugins are left out (:func:`plugin_errors`)."""
    with _lock:
        return sorted(_current_registry().experts.values(), key=lambda info: info.name)


def get_expert_info(name: str) -> ExpertInfo:
    """The registration of expert ``name``; the error lists the installed ones."""
    with _lock:
        registry = _current_registry()
        experts = dict(registry.experts)
        contested = registry.contested.get(name)
        broken = sorted({e.distribution for e in plugin_errors()})
    if contested:
        raise UnknownExpertError(
            f"expert {name!r} is registered by several plugins ({', '.join(contested)}); uninstall all but one"
        )
    if name not in experts:
        installed = ", ".join(sorted(experts)) or "none"
        hint = ""
        if not experts:
            hint = " (install a plugin, e.g. `pip install ./myriad_experts_patchcore`"
            hint += f"; is {ENV_LOAD_PLUGINS} set?)" if ENV_LOAD_PLUGINS in os.environ else ")"
        if broken:
            hint += f"; plugins that failed: {', '.join(broken)} (see `myriad experts`)"
        raise UnknownExpertError(f"unknown expert {name!r}; installed experts: {installed}{hint}")
    return experts[name]


def validation_summary(exc: Any, info: ExpertInfo | None = None) -> str:
    """A pydantic ``ValidationError`` on one line: ``field: message (got value)`` per error, joined by ``; ``.

    A refused ``mode`` says which modes the expert supports instead of pydantic's wording.
    """
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "config"
        got = error.get("input")
        if where == "mode" and info is not None and isinstance(got, str):
            modes = ", ".join(m.value if hasattr(m, "value") else str(m) for m in info.modes)
            parts.append(f"mode {got!r} is not supported (this expert runs {modes})")
            continue
        shown = repr(got) if isinstance(got, (str, int, float, bool)) or got is None else type(got).__name__
        message = str(error.get("msg", "invalid")).replace("\n", " ")
        parts.append(f"{where}: {message} (got {shown[:80]})" if error.get("type") != "missing" else f"{where}: {message}")
    return "; ".join(parts)


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
        raise ConfigError(f"invalid config for expert {name!r}: {validation_summary(exc, info)}") from exc
    factory = info.load_factory()
    expert = factory(cfg)
    if isinstance(expert, Expert):
        expert.registered_name = name  # errors of the host's contract checks name the expert as registered
        _check_agrees_with_registration(expert, info)
    return expert


def _check_agrees_with_registration(expert: Expert, info: ExpertInfo) -> None:
    """The registration is the one source of an expert's facts; the class the factory built must agree with it.

    ``register(config=..., modes=..., transductive=...)`` is what the host reads (without importing the
    class, so discovery stays instant); a class whose ``Config``, ``mode`` or ``transductive`` says
    otherwise is a plugin bug, reported here, at the first build, naming the plugin.
    """
    from myriad.errors import ContractError

    where = f"expert {info.name!r} ({info.distribution or 'unknown distribution'})"
    if bool(type(expert).transductive) != info.transductive:
        raise ContractError(
            f"{where}: its class says transductive={bool(type(expert).transductive)} but register() says "
            f"transductive={info.transductive}; make them agree"
        )
    try:
        model = type(expert).config_model()
    except NotImplementedError:
        model = info.config
    if model is not info.config:
        raise ContractError(f"{where}: its class's Config is {model.__name__} but register() gave {info.config.__name__}")
    if expert.mode not in info.modes:
        supported = ", ".join(m.value for m in info.modes)
        raise ContractError(f"{where}: built in mode {expert.mode.value!r}, which register() does not list ({supported})")


def _reset_for_tests() -> None:
    """Forget loaded entry points (tests use this to re-read MYRIAD_LOAD_PLUGINS)."""
    global _loaded, _registry
    with _lock:
        for name, plugin in list(pm.list_name_plugin()):
            if name and ":" in name and plugin is not None and getattr(plugin, "__name__", "") in sys.modules:
                pm.unregister(plugin)
        _load_errors.clear()
        _registry = None
        _loaded = False
