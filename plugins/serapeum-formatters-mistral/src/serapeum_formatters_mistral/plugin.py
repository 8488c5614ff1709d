"""Entry point of the ``serapeum-formatters-mistral`` distribution."""

from __future__ import annotations

from serapeum.core.plugins import PromptFormatter, hookimpl
from serapeum_formatters_mistral.mistral import MISTRAL


@hookimpl
def serapeum_register_formatters() -> list[PromptFormatter]:
    return [MISTRAL]
