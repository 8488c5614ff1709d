"""Entry point of the ``serapeum-source-url`` distribution."""

from __future__ import annotations

from serapeum.core.plugins import ModelSource, hookimpl
from serapeum_source_url.source import URL_SOURCE


@hookimpl
def serapeum_register_sources() -> list[ModelSource]:
    return [URL_SOURCE]
