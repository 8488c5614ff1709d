"""Checks on format strings (``%`` and ``str.format``): the widths they ask for, before padding.

A format such as ``'%999999999s'`` or ``'{:>999999999}'`` allocates far more than its inputs
in one C call, past any deadline, so its size is bounded before it runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from jinja2.sandbox import SandboxedEscapeFormatter, SandboxedFormatter

from serapeum.llama_cpp.template_sandbox.budget import HUGE, Budget

_DIGITS = re.compile(r"\d+")


def _spec_width(spec: str) -> int:
    """An upper bound on the widths and precisions a ``str.format`` spec asks for."""
    total = 0
    for run in _DIGITS.findall(spec):
        if len(run) > 12:
            return HUGE
        total += int(run)
    return total


def _percent_widths(budget: Budget, text: str, positional: Sequence[Any]) -> tuple[int, int]:
    """The widths and precisions a ``%`` format asks for, and how many values it prints."""
    total = conversions = index = 0
    pos, end = 0, len(text)
    while True:
        pos = text.find("%", pos) + 1
        if pos == 0 or pos >= end:
            return total, conversions
        if conversions % 1024 == 1023:
            budget.tick()
        if text[pos] == "(":
            depth, pos = 1, pos + 1
            while pos < end and depth:
                depth += (text[pos] == "(") - (text[pos] == ")")
                pos += 1
        while pos < end and text[pos] in "#0- +":
            pos += 1
        for field in (0, 1):
            if field:
                if pos >= end or text[pos] != ".":
                    break
                pos += 1
            if pos < end and text[pos] == "*":
                value = positional[index] if index < len(positional) else 0
                index, pos = index + 1, pos + 1
                total += abs(value) if isinstance(value, int) else 0
                continue
            start = pos
            while pos < end and "0" <= text[pos] <= "9":
                pos += 1
            if pos - start > 12:
                return HUGE, conversions
            total += int(text[start:pos] or 0)
        while pos < end and text[pos] in "hlL":
            pos += 1
        if pos < end:
            if text[pos] != "%":
                conversions += 1
                index += 1
            pos += 1


def check_percent(budget: Budget, fmt: str | bytes, values: Any) -> None:
    text = fmt if isinstance(fmt, str) else fmt.decode("latin-1")
    positional = values if isinstance(values, tuple) else (values,)
    widths, conversions = _percent_widths(budget, text, positional)
    payload = budget.weigh(values)
    if isinstance(values, Mapping):  # each %(key)s may print any value of the mapping
        payload *= conversions
    budget.need(len(text) + widths + payload, "a %-format")


class CheckedFormatter(SandboxedFormatter):
    """``str.format`` with each field's width checked before it is padded, and the total."""

    def __init__(self, env: Any, budget: Budget, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self._budget = budget
        self._produced = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        self._budget.tick()
        self._budget.need(_spec_width(format_spec), "a str.format field")
        text = super().format_field(value, format_spec)
        self._produced += len(text)
        self._budget.need(self._produced, "str.format")
        return text


class CheckedEscapeFormatter(CheckedFormatter, SandboxedEscapeFormatter):
    """The same for ``Markup.format``."""
