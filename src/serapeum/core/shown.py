"""A short repr of any value for an error message, that never raises and never takes long.

Error messages quote the value they refuse. A plain ``repr`` can itself fail or explode:
an integer over 4,300 digits raises ``ValueError`` (Python's limit on int-to-str), a
``__repr__`` may raise, and a dict of a million entries prints megabytes. ``shown`` prints
containers only partly (``reprlib``), big integers by their size, and whatever fails by its
type, so refusing a value can never become an untyped error of its own.
"""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["shown"]

_MAX_INT_BITS = 4_000  # about 1,200 digits: far below Python's int-to-str limit


class _Short(reprlib.Repr):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxstring = self.maxother = self.maxlong = max(limit, 12)

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > _MAX_INT_BITS:
            return f"<an integer of {x.bit_length():,} bits>"
        return super().repr_int(x, level)

    def repr_instance(self, x: Any, level: int) -> str:
        try:
            return super().repr_instance(x, level)
        except Exception:
            return f"<{type(x).__name__} object>"


def shown(value: Any, limit: int = 100) -> str:
    """``repr(value)``, at most about ``limit`` characters; never raises."""
    try:
        text = _Short(limit).repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit + 3 else text[:limit] + "..."
