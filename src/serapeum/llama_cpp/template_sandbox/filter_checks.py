"""Checks on Jinja's filters, run before a filter sees its value.

Filters such as ``center``, ``indent``, ``join``, ``replace`` or ``tojson(indent=)`` build
far more than their inputs, and some (``wordwrap``, ``urlize``, ``title``) are pure Python
that cannot be interrupted: each is refused, before it runs, if its result or its input
would be too large. ``filters`` runs the checks registered here for a filter's name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serapeum.llama_cpp.template_sandbox.budget import Budget
from serapeum.llama_cpp.template_sandbox.checks import (
    LINE_BREAKS,
    Args,
    Kwargs,
    check_bits,
    materialize,
    param,
    replaced_size,
)
from serapeum.llama_cpp.template_sandbox.limits import SLOW_FILTER_CHARS, _Stop


def _filter_check(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(check: Callable[..., Any]) -> Callable[..., Any]:
        FILTER_CHECKS.setdefault(name, []).append(check)
        return check

    return register


_FilterCheck = Callable[[Budget, Any, Args, Kwargs], Any]
FILTER_CHECKS: dict[str, list[_FilterCheck]] = {}


@_filter_check("center")
def _center_check(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> Any:
    width = param(args, kwargs, 0, "width", 80)
    if isinstance(width, int):
        budget.need(width, "center")
    return value


@_filter_check("indent")
def _indent_check(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> Any:
    width = param(args, kwargs, 0, "width", 4)
    prefix = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    budget.need(prefix, "indent")
    text = str(value)
    lines = 1 + sum(text.count(mark) for mark in LINE_BREAKS)
    budget.need(len(text) + max(prefix, 0) * lines, "indent")
    return value


@_filter_check("join")
def _join_check(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> Any:
    items = materialize(budget, value)
    separator = param(args, kwargs, 0, "d", "")
    attribute = param(args, kwargs, 1, "attribute", None)
    size = sum(len(item) if isinstance(item, str) else budget.weigh(item) for item in items)
    if attribute is not None:
        size += 64 * len(items)
    budget.need(size + len(str(separator)) * max(len(items) - 1, 0), "join")
    return items


@_filter_check("replace")
def _replace_check(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> Any:
    old, new = param(args, kwargs, 0, "old", ""), param(args, kwargs, 1, "new", "")
    count = param(args, kwargs, 2, "count", None)
    budget.need(replaced_size(str(value), str(old), str(new), count), "replace")
    return value


@_filter_check("tojson")
def _tojson_check(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> Any:
    indent = param(args, kwargs, 0, "indent", None)
    step = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    if step > 64:
        raise _Stop(f"tojson indent of {step:,} characters (limit 64)")
    # Each line is indented once per level. (Escapes can make the text up to twelve times
    # longer than the value; the result is checked when it is made.)
    weight = budget.weigh(value)
    budget.need(weight + (weight // 2) * max(step, 0) * budget.depth(value), "tojson")
    return value


@_filter_check("batch")
def _batch_check(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> Any:
    count = param(args, kwargs, 0, "linecount", 1)
    fill = param(args, kwargs, 1, "fill_with", None)
    if isinstance(count, int) and fill is not None:
        budget.need(count * (8 + budget.weigh(fill)), "batch")
    return value


@_filter_check("slice")
def _slice_check(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> Any:
    count = param(args, kwargs, 0, "slices", 1)
    if isinstance(count, int):
        budget.need(16 * count, "slice")
    return value


@_filter_check("round")
def _round_check(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> Any:
    # round(int, -n) computes 10**n first, in one C call no deadline interrupts:
    # ``5|round(-1000000000)`` would run for hours.
    precision = param(args, kwargs, 0, "precision", 0)
    if isinstance(value, int) and isinstance(precision, int) and precision < 0:
        check_bits(-precision * 10 // 3)
    return value


@_filter_check("wordwrap")
def _wordwrap_check(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> Any:
    text = _slow_input(budget, value, "wordwrap")
    wrap = param(args, kwargs, 2, "wrapstring", None)
    if isinstance(wrap, str):
        budget.need(len(text) + (len(text) + 1) * len(wrap), "wordwrap")
    return value


@_filter_check("urlize")
def _urlize_check(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> Any:
    text = _slow_input(budget, value, "urlize")
    extra = sum(
        len(str(param(args, kwargs, index, name, None) or ""))
        for index, name in ((2, "target"), (3, "rel"))
    )
    budget.need(2 * len(text) + (len(text) // 3 + 1) * (64 + extra), "urlize")
    return value


def _word_list_check(name: str) -> _FilterCheck:
    # Pure Python over a list of every word: slow, and many times the text in memory.
    def check(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> Any:
        _slow_input(budget, value, name)
        return value

    return check


for _name in ("title", "wordcount", "striptags"):
    _filter_check(_name)(_word_list_check(_name))


@_filter_check("list")
@_filter_check("sort")
@_filter_check("slice")
@_filter_check("batch")
def _characters_check(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> Any:
    if isinstance(value, str):  # a list of one string per character
        budget.need(9 * len(value), "a list of characters")
    return value


@_filter_check("pprint")
def _pprint_check(budget: Budget, value: Any, args: Args, kwargs: Kwargs) -> Any:
    if budget.weigh(value) > SLOW_FILTER_CHARS:
        raise _Stop(f"pprint of a value over {SLOW_FILTER_CHARS:,} characters")
    return value


def _slow_input(budget: Budget, value: Any, name: str) -> str:
    text = str(value)
    if len(text) > SLOW_FILTER_CHARS:
        raise _Stop(f"{name} of {len(text):,} characters (limit {SLOW_FILTER_CHARS:,})")
    return text
