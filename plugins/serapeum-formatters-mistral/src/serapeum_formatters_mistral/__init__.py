"""Mistral Instruct prompt formatter (registered as ``mistral``)."""

from serapeum_formatters_mistral.mistral import MISTRAL

__all__ = ["MISTRAL"]
