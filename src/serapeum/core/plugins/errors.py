"""Errors about plugins (defined in ``serapeum.core.errors``, the one place for core errors)."""

from __future__ import annotations

from serapeum.core.errors import (
    BackendNotInstalledError,
    PluginConflictError,
    PluginError,
    PluginLoadError,
    PluginValidationError,
    SourceNotInstalledError,
    UnknownPluginError,
)

__all__ = [
    "BackendNotInstalledError",
    "PluginConflictError",
    "PluginError",
    "PluginLoadError",
    "PluginValidationError",
    "SourceNotInstalledError",
    "UnknownPluginError",
]
