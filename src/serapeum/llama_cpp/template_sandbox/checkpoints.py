"""The functions a rewritten template calls at its checkpoints (see ``rewrite``).

Each is registered as an internal filter under a name no template can spell (it has a
space), and each counts a step and checks the deadline before it measures what it is given.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from jinja2.runtime import markup_join
from jinja2.utils import pass_eval_context

from serapeum.llama_cpp.template_sandbox.budget import BoundedIterator, current_budget, enter
from serapeum.llama_cpp.template_sandbox.checks import check_binop

STEP = "serapeum step"
OUT = "serapeum out"
VALUE = "serapeum value"
CONCAT = "serapeum concat"
PLUS = "serapeum plus"
COMPARE = "serapeum compare"
ITER = "serapeum iter"


def _step(text_chars: int) -> None:
    """At the start of every loop iteration: a step, and the text the body writes."""
    budget = enter()
    budget.allocated += text_chars
    if budget.allocated > budget.allocated_limit:
        budget.charge(0)


def _out(value: Any) -> Any:
    """Every ``{{ expression }}`` written, at any level (macros and captured blocks too)."""
    budget = enter()
    if type(value) is not str:
        value = value if isinstance(value, str) or hasattr(value, "__html__") else str(value)
    size = len(value) if isinstance(value, str) else 64
    if size > budget.value_limit:
        budget.need(size, "writing a value")
    budget.allocated += size
    if budget.allocated > budget.allocated_limit:
        budget.charge(0)
    return value


def _value(value: Any) -> Any:
    """A list, tuple or dict literal, a slice, or a captured block, as it is built."""
    return enter().account(value)


@pass_eval_context
def _concat(eval_ctx: Any, *parts: Any) -> str:
    """``~``: the pieces' sizes are checked before they are joined."""
    budget = enter()
    texts = [part if type(part) is str else str(part) for part in parts]
    size = sum(map(len, texts))
    if size > budget.value_limit:
        budget.need(size, "~")
    budget.charge(size)
    if eval_ctx.autoescape:  # Jinja's own choice: escape the parts that are not Markup
        return markup_join(parts)  # type: ignore[no-any-return]
    return "".join(texts)


def _plus(first: Any, *rest: Any) -> Any:
    """``a + b + c``: one checkpoint for the chain, strings joined once their size is known."""
    budget = enter()
    if type(first) is str and all(type(item) is str for item in rest):
        size = len(first) + sum(map(len, rest))
        if size > budget.value_limit:
            budget.need(size, "+")
        budget.charge(size)
        return first + "".join(rest)
    total = first
    for item in rest:
        check_binop(budget, "+", total, item)
        total = budget.account(total + item)
    return total


def _contains(left: Any, right: Any) -> bool:
    return left in right


def _not_contains(left: Any, right: Any) -> bool:
    return left not in right


_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gteq": operator.ge,
    "lt": operator.lt,
    "lteq": operator.le,
    "in": _contains,
    "notin": _not_contains,
}


def _compare(left: Any, op: str, right: Any, *chain: Any) -> Any:
    """A comparison (``==``, ``in``, ...): bounded in cost, but a step all the same.

    A chain (``a < b < c``) evaluates all its operands first, unlike Python; template
    operands have no side effects, so at most an operand Python would skip raises its error.
    """
    enter()
    result = _COMPARISONS[op](left, right)
    for index in range(0, len(chain), 2):
        if not result:
            break
        left, right = right, chain[index + 1]
        result = _COMPARISONS[chain[index]](left, right)
    return result


def _iterate(items: Any) -> Any:
    """The iterable of a ``{% for ... if ... %}`` loop, whose skipped items never reach the body."""
    budget = current_budget()
    return BoundedIterator(iter(items), budget)


INTERNAL_FILTERS: dict[str, Callable[..., Any]] = {
    STEP: _step,
    OUT: _out,
    VALUE: _value,
    CONCAT: _concat,
    PLUS: _plus,
    COMPARE: _compare,
    ITER: _iterate,
}
