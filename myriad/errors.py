"""Exceptions raised by Myriad. Every message names the file, expert or setting at fault."""

from __future__ import annotations


class MyriadError(Exception):
    """Base class of every error Myriad raises on purpose (the CLI prints these without a traceback)."""


class ImageError(MyriadError):
    """An image file could not be read or converted."""


class DatasetError(MyriadError):
    """A dataset folder is empty, malformed or missing a part."""


class UnknownExpertError(MyriadError):
    """The requested expert is not installed."""


class ExpertStateError(MyriadError):
    """An expert was used in a state that does not allow it (e.g. predict before fit)."""


class WeightsError(MyriadError):
    """Weights are missing, unreadable or do not match the model."""


class ConfigError(MyriadError):
    """A configuration value is invalid."""


class ContractError(MyriadError):
    """An expert returned something the expert contract does not allow (a plugin bug); names the expert and image."""


class MissingExtraError(MyriadError, ImportError):
    """An optional extra (e.g. ``lmm``) is not installed; the message names the install command."""


class PluginError(MyriadError):
    """A plugin that could not be loaded or whose registrations were refused.

    The host records it (:func:`myriad.plugins.plugin_errors`) instead of raising it, so one
    broken plugin never hides the others. ``distribution``: the plugin's distribution name;
    ``entry_point``: its entry-point (or in-process plugin) name; ``error``: what went wrong.
    """

    def __init__(self, distribution: str, entry_point: str, error: str) -> None:
        self.distribution = distribution
        self.entry_point = entry_point
        self.error = error
        super().__init__(f"plugin {distribution} ({entry_point}): {error}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # picklable despite the 3-argument __init__
        return (type(self), (self.distribution, self.entry_point, self.error))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PluginError):
            return NotImplemented
        return (self.distribution, self.entry_point, self.error) == (other.distribution, other.entry_point, other.error)

    def __hash__(self) -> int:
        return hash((self.distribution, self.entry_point, self.error))


class MyriadWarning(UserWarning):
    """Something worked, differently than asked (the message says how and why, in one line)."""
