"""Plugin contracts: hooks, descriptors, the host and its registries.

Plugin authors need ``hookimpl`` and the descriptor classes::

    from serapeum.core.plugins import PromptFormatter, hookimpl

    @hookimpl
    def serapeum_register_formatters():
        return [PromptFormatter(name="myfamily", messages_to_prompt=..., completion_to_prompt=...)]
"""

from serapeum.core.plugins.backend_api import (
    BackendCapabilities,
    BackendChunk,
    BackendResult,
    ChunkStream,
    GenerationRequest,
    LoadedModel,
)
from serapeum.core.plugins.descriptors import (
    BackendSpec,
    ModelRequest,
    ModelSource,
    PromptFormatter,
)
from serapeum.core.plugins.errors import (
    BackendNotInstalledError,
    PluginConflictError,
    PluginError,
    PluginLoadError,
    PluginValidationError,
    SourceNotInstalledError,
    UnknownPluginError,
)
from serapeum.core.plugins.hookspecs import hookimpl, hookspec
from serapeum.core.plugins.manager import (
    ENTRY_POINT_GROUP,
    PluginFailure,
    PluginHost,
    PluginInfo,
    SkippedPlugin,
    get_plugin_host,
)
from serapeum.core.plugins.model_info import ModelInfo
from serapeum.core.plugins.registry import Registered, Registry, normalize_name

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackendCapabilities",
    "BackendChunk",
    "BackendNotInstalledError",
    "BackendResult",
    "BackendSpec",
    "ChunkStream",
    "GenerationRequest",
    "LoadedModel",
    "ModelInfo",
    "ModelRequest",
    "ModelSource",
    "PluginConflictError",
    "PluginError",
    "PluginFailure",
    "PluginHost",
    "PluginInfo",
    "PluginLoadError",
    "PluginValidationError",
    "PromptFormatter",
    "Registered",
    "Registry",
    "SkippedPlugin",
    "SourceNotInstalledError",
    "UnknownPluginError",
    "get_plugin_host",
    "hookimpl",
    "hookspec",
    "normalize_name",
]
