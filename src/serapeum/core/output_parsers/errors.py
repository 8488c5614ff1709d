"""Errors of output parsing (defined in ``serapeum.core.errors``)."""

from __future__ import annotations

from serapeum.core.errors import OutputParserError

__all__ = ["OutputParserError"]
