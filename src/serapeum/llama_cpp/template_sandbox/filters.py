"""The filters, tests and globals a template may use, each bounded.

Every filter and test counts a step; a filter runs the checks ``filter_checks`` registered
for its name first, and what it returns is measured and charged. ``format`` and ``sum``
are replaced by versions that check their inputs, and the globals Hugging Face templates
expect (``raise_exception``, ``strftime_now``, ``namespace``, ...) are bounded versions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any

from jinja2.exceptions import FilterArgumentError
from jinja2.filters import make_attrgetter
from jinja2.sandbox import safe_range
from jinja2.utils import Namespace, _PassArg, generate_lorem_ipsum, pass_environment
from markupsafe import soft_str

from serapeum.llama_cpp.template_sandbox.budget import current_budget, enter
from serapeum.llama_cpp.template_sandbox.checks import check_binop, materialize
from serapeum.llama_cpp.template_sandbox.filter_checks import FILTER_CHECKS
from serapeum.llama_cpp.template_sandbox.formats import check_percent


# Underscored though the public module uses it: like limits._Stop, it never leaves the
# sandbox (the caller sees ChatTemplateError).
class _Refusal(Exception):
    """The template called ``raise_exception``: it refuses this conversation."""


class _Namespace(Namespace):
    """``namespace()``, printing without its contents.

    Its attributes can change after it is put in a list, so what it would print cannot be
    measured once; a namespace that prints its contents could print a structure built to
    double at every level.
    """

    def __repr__(self) -> str:
        return "<Namespace>"


def _format_filter(value: Any, *args: Any, **kwargs: Any) -> str:
    """Jinja's ``format`` (``value % args``) with the widths and sizes checked first."""
    if args and kwargs:
        raise FilterArgumentError("can't handle positional and keyword arguments at the same time")
    text = soft_str(value)
    values = kwargs or args
    check_percent(current_budget(), text, values)
    return text % values  # type: ignore[no-any-return]


@pass_environment
def _sum_filter(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    """Jinja's ``sum``; anything but numbers is added one step at a time (``sum`` of lists is
    quadratic and would run in C, past the deadline)."""
    budget = current_budget()
    items = materialize(budget, iterable)
    if attribute is not None:
        getter = make_attrgetter(environment, attribute)
        items = [getter(item) for item in items]
    numbers = int | float
    if isinstance(start, numbers) and all(isinstance(item, numbers) for item in items):
        return sum(items, start)
    if isinstance(start, str | bytes | bytearray):
        raise TypeError("sum() can't sum strings [use ''.join(seq) instead]")
    total = start
    for item in items:
        budget.tick()
        check_binop(budget, "+", total, item)
        total = budget.account(total + item)
    return total


def _lipsum(n: Any = 5, html: Any = True, min: Any = 20, max: Any = 100) -> str:
    budget = current_budget()
    # Python's random.randrange takes whole floats too (lipsum(1, false, 10, 1e8)): the
    # sizes are checked as the integers they stand for, and anything else is refused.
    n, min, max = (_whole_number(value, "lipsum") for value in (n, min, max))
    budget.need(abs(n) * abs(max) * 12, "lipsum")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)  # type: ignore[no-any-return]


def _whole_number(value: Any, what: str) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    raise TypeError(f"{what}() takes whole numbers, got {type(value).__name__}")


def bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    checks = FILTER_CHECKS.get(name, [])
    offset = 0 if _PassArg.from_obj(func) is None else 1  # type: ignore[arg-type]

    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = enter()
        if checks and len(args) > offset:
            value, rest = args[offset], args[offset + 1 :]
            for check in checks:
                value = check(budget, value, rest, kwargs)
            args = (*args[:offset], value, *rest)
        return budget.account(func(*args, **kwargs))

    return bounded


def bounded_test(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        enter()
        return func(*args, **kwargs)

    return bounded


def _raise_exception(message: Any) -> None:
    raise _Refusal(str(message)[:500])


def _strftime_now(fmt: Any) -> str:
    return datetime.now().strftime(str(fmt)[:100])


REPLACED_FILTERS: dict[str, Callable[..., Any]] = {"format": _format_filter, "sum": _sum_filter}
"""Jinja's filters that are replaced by versions checking their inputs."""

GLOBALS: dict[str, Any] = {
    "range": safe_range,
    "lipsum": _lipsum,
    "namespace": _Namespace,
    "raise_exception": _raise_exception,
    "strftime_now": _strftime_now,
}
"""The globals a template sees besides Jinja's own."""
