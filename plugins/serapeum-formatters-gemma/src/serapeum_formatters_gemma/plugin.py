"""Entry point of the ``serapeum-formatters-gemma`` distribution."""

from __future__ import annotations

from serapeum.core.plugins import PromptFormatter, hookimpl
from serapeum_formatters_gemma.gemma import GEMMA


@hookimpl
def serapeum_register_formatters() -> list[PromptFormatter]:
    return [GEMMA]
