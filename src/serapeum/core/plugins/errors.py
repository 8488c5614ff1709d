"""Errors about plugins: each one says what was wrong and what to do about it."""

from __future__ import annotations

from collections.abc import Sequence

from serapeum.core.errors import ConfigurationError, SerapeumError


class PluginError(SerapeumError):
    """Base class for plugin problems."""


class PluginLoadError(PluginError):
    """A plugin failed to import (raised only in strict mode; otherwise recorded)."""


class PluginValidationError(PluginError, TypeError):
    """A plugin's hook returned something that is not the descriptor it promised."""


class PluginConflictError(PluginError, ConfigurationError):
    """Two plugins registered the same name; the message names both distributions."""


class UnknownPluginError(PluginError, ConfigurationError, LookupError):
    """Nothing is registered under the requested name."""

    def __init__(self, message: str, *, name: str, available: Sequence[str]) -> None:
        super().__init__(message)
        self.name = name
        self.available = tuple(available)


class SourceNotInstalledError(PluginError, ConfigurationError):
    """No installed model source handles the request; names the distribution to install."""

    def __init__(self, message: str, *, distribution: str | None) -> None:
        super().__init__(message)
        self.distribution = distribution
