"""Entry point of the ``serapeum-source-hf`` distribution."""

from __future__ import annotations

from serapeum.core.plugins import ModelSource, hookimpl
from serapeum_source_hf.source import HF_SOURCE


@hookimpl
def serapeum_register_sources() -> list[ModelSource]:
    return [HF_SOURCE]
