"""Entry point of the ``serapeum-formatters-llama`` distribution."""

from __future__ import annotations

from serapeum.core.plugins import PromptFormatter, hookimpl
from serapeum_formatters_llama.llama2 import LLAMA2
from serapeum_formatters_llama.llama3 import LLAMA3


@hookimpl
def serapeum_register_formatters() -> list[PromptFormatter]:
    return [LLAMA2, LLAMA3]
