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


class MissingExtraError(MyriadError, ImportError):
    """An optional extra (e.g. ``lmm``) is not installed; the message names the install command."""
