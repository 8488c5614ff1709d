"""Entry point of the ``serapeum-source-local`` distribution."""

from __future__ import annotations

from serapeum.core.plugins import ModelSource, hookimpl
from serapeum_source_local.source import LOCAL_SOURCE


@hookimpl
def serapeum_register_sources() -> list[ModelSource]:
    return [LOCAL_SOURCE]
