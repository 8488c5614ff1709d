"""The hooks a serapeum plugin can implement (entry-point group ``serapeum``).

A plugin is a module (or object) with functions decorated by
``serapeum.core.plugins.hookimpl`` whose names match these specs. Each hook returns
descriptors; the host validates them and records which distribution gave each one.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from serapeum.core.plugins.descriptors import BackendSpec, ModelSource, PromptFormatter

PROJECT_NAME = "serapeum"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def serapeum_register_formatters() -> Iterable[PromptFormatter]:
    """Return the prompt formatters this plugin provides.

    Each ``PromptFormatter`` is selectable by its ``name`` and ``aliases`` (compared
    without case, ``-`` or ``_``), e.g. ``LlamaCPP(..., formatter="llama3")``.
    """


@hookspec
def serapeum_register_sources() -> Iterable[ModelSource]:
    """Return the model sources this plugin provides.

    A source claims requests (paths, URLs, hub ids, ...) and resolves them to a local
    GGUF file. Sources with a higher ``priority`` are asked first.
    """


@hookspec
def serapeum_register_backends() -> Iterable[BackendSpec]:
    """Return the inference backends this plugin provides (``llama-cpp`` is built in)."""
