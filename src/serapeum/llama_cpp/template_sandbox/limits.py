"""The bounds on one render of a chat template, and the exception that says one was reached.

Kept apart from the code that enforces them so the public module can re-export the numbers
without importing the sandbox, and every checker can raise the same ``_Stop``.
"""

from __future__ import annotations

import attrs

MAX_TEMPLATE_CHARS = 100_000
"""The longest template accepted (the longest official ones are under 10,000)."""
MAX_TEMPLATE_TOKENS = 20_000
"""The most tokens in a template (official ones have under 1,000); compiling is linear in it."""
MAX_TEMPLATE_DEPTH = 120
"""How deeply the parsed template may nest (official ones stay under 20)."""
MAX_SECONDS = 1.0
"""Wall-clock time for one render, plus ``SECONDS_PER_MILLION_CHARS`` of conversation."""
SECONDS_PER_MILLION_CHARS = 1.0
MAX_STEPS = 1_000_000
"""Checkpoints (loop iterations, calls, filters, operators, ...) in one render."""
MAX_VALUE_CHARS = 1_000_000
"""The largest value: a string's length, or about what a container prints as."""
MAX_OUTPUT_CHARS = 1_000_000
"""The longest rendered prompt."""
MAX_ALLOCATED_CHARS = 32_000_000
"""All the characters one render may create, counted as they are made."""
MAX_VALUE_DEPTH = 64
"""How deeply a value may nest lists and dicts."""
MAX_INT_BITS = 20_000
"""The largest integer (Python itself refuses to print one over about 14,000 bits)."""
SLOW_FILTER_CHARS = 200_000
"""The longest input to a filter written in pure Python that cannot be interrupted."""
VALUE_PER_INPUT = 8
"""Per-value and output bounds are at least this multiple of the conversation's size."""
ALLOCATED_PER_INPUT = 32
"""The allocation budget is at least this multiple of the conversation's size."""
MAX_SCALED_CHARS = 24_000_000
"""Where the size bounds stop scaling with the conversation. A render can hold at most the
allocation budget plus one value over it before it is stopped: (32M + 24M) characters,
224 MB at 4 bytes a character (emoji, CJK), so no render grows the process by more than
256 MB whatever the conversation. One of tens of millions of characters fits no context
window anyway; its render fails as too large."""
MAX_SCALED_SECONDS = 4.0
"""Where the time bound's scaling stops: no render runs longer, whatever the conversation."""


# Underscored though shared by the package: it never leaves the sandbox (the caller sees
# ChatTemplateError), so it is not one of the library's public errors.
class _Stop(Exception):
    """A bound was reached; it reaches the caller as ``ChatTemplateError``."""


@attrs.frozen
class Limits:
    """The bounds for one render, scaled to the conversation's size."""

    value_chars: int
    output_chars: int
    allocated_chars: int
    steps: int
    seconds: float

    @classmethod
    def for_input(cls, chars: int, messages: int) -> Limits:
        value = max(MAX_VALUE_CHARS, min(VALUE_PER_INPUT * chars, MAX_SCALED_CHARS))
        return cls(
            value_chars=value,
            output_chars=max(MAX_OUTPUT_CHARS, min(VALUE_PER_INPUT * chars, MAX_SCALED_CHARS)),
            allocated_chars=max(
                MAX_ALLOCATED_CHARS, min(ALLOCATED_PER_INPUT * chars, MAX_SCALED_CHARS)
            ),
            steps=max(MAX_STEPS, 4 * chars, 200 * messages),
            seconds=min(
                MAX_SECONDS + SECONDS_PER_MILLION_CHARS * chars / 1_000_000, MAX_SCALED_SECONDS
            ),
        )
