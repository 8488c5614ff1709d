"""Gemma instruction prompt formatter (registered as ``gemma``)."""

from serapeum_formatters_gemma.gemma import GEMMA

__all__ = ["GEMMA"]
