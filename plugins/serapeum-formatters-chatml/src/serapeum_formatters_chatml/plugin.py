"""Entry point of the ``serapeum-formatters-chatml`` distribution."""

from __future__ import annotations

from serapeum.core.plugins import PromptFormatter, hookimpl
from serapeum_formatters_chatml.chatml import CHATML


@hookimpl
def serapeum_register_formatters() -> list[PromptFormatter]:
    return [CHATML]
