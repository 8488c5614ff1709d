"""Errors of output parsing: they keep the raw text so nothing the model said is lost."""

from __future__ import annotations

from serapeum.core.errors import SerapeumError


class OutputParserError(SerapeumError, ValueError):
    """The model output could not be parsed or validated; ``raw_text`` is what it said."""

    def __init__(self, message: str, *, raw_text: str) -> None:
        super().__init__(f"{message}. Raw output: {raw_text[:500]!r}")
        self.raw_text = raw_text
