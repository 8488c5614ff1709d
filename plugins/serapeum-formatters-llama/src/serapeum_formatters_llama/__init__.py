"""Llama 2 Chat and Llama 3 Instruct prompt formatters (registered as ``llama2`` and ``llama3``)."""

from serapeum_formatters_llama.llama2 import LLAMA2
from serapeum_formatters_llama.llama3 import LLAMA3

__all__ = ["LLAMA2", "LLAMA3"]
