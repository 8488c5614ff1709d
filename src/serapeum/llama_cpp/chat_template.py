"""A prompt formatter from the chat template a GGUF file carries, rendered in a bounded sandbox.

The template is untrusted input from a downloaded file. Jinja2's
``ImmutableSandboxedEnvironment`` already keeps it away from Python internals and from
mutating the values passed in; this module adds bounds that no template can walk around:

* **Time and steps.** The parsed template is rewritten before it is compiled so that every
  loop iteration, comparison, ``~`` concatenation, output piece, filter, test, call and
  arithmetic operator first passes a checkpoint that counts a step and checks a wall-clock
  deadline. Nothing else in a template repeats, so no construct runs unchecked for long.
* **Size.** Every value the template builds (by operators, filters, method calls, literals,
  slices, captured blocks) is measured as it is made: a string, or the text a container
  would print as, may not exceed a per-value bound, and every filter or method that could
  allocate far more than its inputs (``center``, ``indent``, ``format``, ``%``, ``join``,
  ``replace``, ``tojson(indent=)``, ``batch``, ``slice``, ``lipsum``, ``str.ljust``, ...) is
  checked *before* it runs. Integers are bounded in bits.
* **Memory.** All the characters the template creates count against one allocation budget
  for the render, so storing many large values (in a namespace, in recursion) cannot grow
  the process without bound.

The bounds scale with the conversation (a multiple of its size, or the base limits,
whichever is larger), so long real conversations still render. Every failure, whatever
Python raised inside, reaches the caller as ``ChatTemplateError``.
"""

from __future__ import annotations

import functools
import operator
import re
import time
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, Sequence, ValuesView
from contextvars import ContextVar
from datetime import datetime
from types import BuiltinMethodType, MethodType
from typing import Any, ClassVar

import attrs
from jinja2 import nodes
from jinja2.exceptions import FilterArgumentError, SecurityError, TemplateSyntaxError
from jinja2.filters import FILTERS, make_attrgetter
from jinja2.lexer import Token, TokenStream
from jinja2.runtime import markup_join
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
    safe_range,
)
from jinja2.utils import (
    Namespace,
    _PassArg,
    generate_lorem_ipsum,
    pass_environment,
    pass_eval_context,
)
from jinja2.visitor import NodeTransformer
from markupsafe import Markup, soft_str

from serapeum.core.llms import Message, MessageRole
from serapeum.core.plugins import ModelInfo, PromptFormatter
from serapeum.llama_cpp.errors import ChatTemplateError

__all__ = [
    "MAX_ALLOCATED_CHARS",
    "MAX_INT_BITS",
    "MAX_OUTPUT_CHARS",
    "MAX_SECONDS",
    "MAX_STEPS",
    "MAX_TEMPLATE_CHARS",
    "MAX_TEMPLATE_DEPTH",
    "MAX_TEMPLATE_TOKENS",
    "MAX_VALUE_CHARS",
    "MAX_VALUE_DEPTH",
    "ChatTemplateError",
    "render_chat_template",
    "template_formatter",
]

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

# Kept for old imports.
MAX_STRING = MAX_VALUE_CHARS
MAX_CALLS = MAX_STEPS

_ADVICE = (
    "pass formatter= (an installed formatter's name or a PromptFormatter) to format "
    "prompts without the model's template"
)
_HUGE = 1 << 62
_monotonic = time.monotonic
_Args = tuple[Any, ...]
_Kwargs = dict[str, Any]


class _Stop(Exception):
    """A bound was reached; it reaches the caller as ``ChatTemplateError``."""


class _Refusal(Exception):
    """The template called ``raise_exception``: it refuses this conversation."""


@attrs.frozen
class _Limits:
    """The bounds for one render, scaled to the conversation's size."""

    value_chars: int
    output_chars: int
    allocated_chars: int
    steps: int
    seconds: float

    @classmethod
    def for_input(cls, chars: int, messages: int) -> _Limits:
        value = max(MAX_VALUE_CHARS, VALUE_PER_INPUT * chars)
        return cls(
            value_chars=value,
            output_chars=max(MAX_OUTPUT_CHARS, VALUE_PER_INPUT * chars),
            allocated_chars=max(MAX_ALLOCATED_CHARS, ALLOCATED_PER_INPUT * chars),
            steps=max(MAX_STEPS, 4 * chars, 200 * messages),
            seconds=MAX_SECONDS + SECONDS_PER_MILLION_CHARS * chars / 1_000_000,
        )


class _Budget:
    """What one render has spent: steps, time, characters. Shared by every checkpoint."""

    __slots__ = (
        "_keep",
        "_memo",
        "allocated",
        "allocated_limit",
        "deadline",
        "limits",
        "output",
        "steps",
        "value_limit",
    )

    def __init__(self, limits: _Limits, start: float) -> None:
        self.limits = limits
        self.deadline = start + limits.seconds
        self.value_limit = limits.value_chars
        self.allocated_limit = limits.allocated_chars
        self.steps = 0
        self.allocated = 0
        self.output = 0
        # Containers already measured, by identity (kept alive so identities stay unique).
        self._memo: dict[int, tuple[int, int]] = {}
        self._keep: list[Any] = []

    def tick(self) -> None:
        self.steps += 1
        if self.steps > self.limits.steps or _monotonic() > self.deadline:
            self.overrun()

    def overrun(self) -> None:
        if self.steps > self.limits.steps:
            raise _Stop(f"the template took more than {self.limits.steps:,} steps")
        raise _Stop(f"the template ran for more than {self.limits.seconds:.1f} s")

    def need(self, size: int, what: str) -> None:
        """Refuse, before it is built, a value of ``size`` characters if it is too large."""
        if size > self.value_limit:
            raise _Stop(
                f"{what} would build {_count(size)} characters; the limit is {self.value_limit:,}"
            )

    def charge(self, size: int) -> None:
        self.allocated += size
        if self.allocated > self.allocated_limit:
            raise _Stop(
                f"the template created more than {self.allocated_limit:,} characters in all"
            )

    def emit(self, size: int) -> None:
        self.output += size
        if self.output > self.limits.output_chars:
            raise _Stop(f"the prompt grew past {self.limits.output_chars:,} characters")
        if _monotonic() > self.deadline:
            self.overrun()

    def weigh(self, value: Any) -> int:
        """About how many characters ``value`` prints as (it exists already: no charge)."""
        return self._weigh(value, 0, False)[0]

    def depth(self, value: Any) -> int:
        return self._weigh(value, 0, False)[1]

    def account(self, value: Any) -> Any:
        """Check and charge a value the template just built; wrap a lazy one."""
        if type(value) is str:
            size = len(value)
            if size > self.value_limit:
                self.need(size, "the template")
            self.allocated += size
            if self.allocated > self.allocated_limit:
                self.charge(0)
            return value
        kind = type(value)
        if kind is bool or value is None or kind is float:
            return value
        if kind is int:
            if value.bit_length() > MAX_INT_BITS:
                self._weigh(value, 0, False)
            return value
        if (
            kind not in _CONTAINERS
            and kind not in _SCALARS
            and kind.__module__ == "builtins"  # a generator or a built-in iterator
            and isinstance(value, Iterator)
        ):
            return _BoundedIterator(value, self)
        self._weigh(value, 0, True)
        return value

    def _weigh(self, value: Any, level: int, charge: bool) -> tuple[int, int]:
        kind = type(value)
        if kind is str or isinstance(value, str | bytes | bytearray):
            size = len(value)
            if charge:
                self.allocated += size
                if self.allocated > self.allocated_limit:
                    self.charge(0)
            if size > self.value_limit:
                self.need(size, "the template")
            return size, 0
        if kind is int or isinstance(value, int):
            bits = value.bit_length()
            if bits > MAX_INT_BITS:
                raise _Stop(f"the template built a {bits:,}-bit integer (limit {MAX_INT_BITS:,})")
            return bits // 3 + 2, 0
        if value is None or kind is float:
            return 8, 0
        known = self._memo.get(id(value))
        if known is not None:
            return known
        children: Any
        if kind is dict or isinstance(value, dict):
            children = (part for pair in value.items() for part in pair)
        elif kind in _CONTAINERS or isinstance(value, list | tuple | KeysView | ValuesView):
            children = value
        elif isinstance(value, ItemsView):
            children = (part for pair in value for part in pair)
        elif isinstance(value, Namespace):
            if charge:
                self.charge(16 * len(object.__getattribute__(value, "_Namespace__attrs")))
            return self._remember(value, (16, 0))
        else:
            return 16, 0  # ranges, generators, macros, loop objects: they print short
        if level >= MAX_VALUE_DEPTH:
            raise _Stop(f"the template nested values more than {MAX_VALUE_DEPTH} deep")
        if charge:
            self.charge(8 * len(value))
        limit = self.limits.value_chars
        weight, depth = 8, 0
        for child in children:
            child_weight, child_depth = self._weigh(child, level + 1, charge)
            weight += child_weight + 8
            depth = max(depth, child_depth)
            if weight > limit:
                self.need(weight, "the template")
        if depth >= MAX_VALUE_DEPTH:
            raise _Stop(f"the template nested values more than {MAX_VALUE_DEPTH} deep")
        return self._remember(value, (weight, depth + 1))

    def _remember(self, value: Any, measured: tuple[int, int]) -> tuple[int, int]:
        self._memo[id(value)] = measured
        self._keep.append(value)
        return measured


_CONTAINERS = frozenset({list, tuple, set, frozenset})
_SCALARS = frozenset({str, int, float, bool, type(None)})


class _BoundedIterator:
    """A lazy filter result (``map``, ``select``, ``batch``, ...): each item is a step."""

    __slots__ = ("_budget", "_items")

    def __init__(self, items: Iterator[Any], budget: _Budget) -> None:
        self._items = items
        self._budget = budget

    def __iter__(self) -> _BoundedIterator:
        return self

    def __next__(self) -> Any:
        item = next(self._items)
        self._budget.tick()
        return self._budget.account(item)


class _Namespace(Namespace):
    """``namespace()``, printing without its contents.

    Its attributes can change after it is put in a list, so what it would print cannot be
    measured once; a namespace that prints its contents could print a structure built to
    double at every level.
    """

    def __repr__(self) -> str:
        return "<Namespace>"


_CURRENT: ContextVar[_Budget | None] = ContextVar("serapeum_template_budget", default=None)


def _budget() -> _Budget:
    budget = _CURRENT.get()
    if budget is None:
        # Outside a render: Jinja's compile-time constant folding asks us to evaluate
        # something. Refusing makes it evaluate at render time, under the bounds.
        raise nodes.Impossible()
    return budget


def _enter() -> _Budget:
    """The render's budget, after counting a step: where every checkpoint starts."""
    budget = _CURRENT.get()
    if budget is None:
        raise nodes.Impossible()  # as in _budget()
    budget.steps += 1
    if budget.steps > budget.limits.steps or _monotonic() > budget.deadline:
        budget.overrun()
    return budget


def _count(size: int) -> str:
    return "an unbounded number of" if size >= _HUGE else f"{size:,}"


def _param(
    args: Sequence[Any], kwargs: Mapping[str, Any], index: int, name: str, default: Any
) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


# --- format strings -----------------------------------------------------------------------

_DIGITS = re.compile(r"\d+")


def _spec_width(spec: str) -> int:
    """An upper bound on the widths and precisions a ``str.format`` spec asks for."""
    total = 0
    for run in _DIGITS.findall(spec):
        if len(run) > 12:
            return _HUGE
        total += int(run)
    return total


def _percent_widths(budget: _Budget, text: str, positional: Sequence[Any]) -> tuple[int, int]:
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
                return _HUGE, conversions
            total += int(text[start:pos] or 0)
        while pos < end and text[pos] in "hlL":
            pos += 1
        if pos < end:
            if text[pos] != "%":
                conversions += 1
                index += 1
            pos += 1


def _check_percent(budget: _Budget, fmt: str | bytes, values: Any) -> None:
    text = fmt if isinstance(fmt, str) else fmt.decode("latin-1")
    positional = values if isinstance(values, tuple) else (values,)
    widths, conversions = _percent_widths(budget, text, positional)
    payload = budget.weigh(values)
    if isinstance(values, Mapping):  # each %(key)s may print any value of the mapping
        payload *= conversions
    budget.need(len(text) + widths + payload, "a %-format")


class _CheckedFormatter(SandboxedFormatter):
    """``str.format`` with each field's width checked before it is padded, and the total."""

    def __init__(self, env: Any, budget: _Budget, **kwargs: Any) -> None:
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


class _CheckedEscapeFormatter(_CheckedFormatter, SandboxedEscapeFormatter):
    """The same for ``Markup.format``."""


# --- checks on Python methods reachable through the sandbox's call ------------------------

_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_BYTE_LINE_BREAKS = (b"\n", b"\r")
_SPACES = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)
_BYTE_SPACES = (b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c")


def _check_width(budget: _Budget, owner: Any, args: _Args, kwargs: _Kwargs) -> _Args:
    width = _param(args, kwargs, 0, "width", 0)
    if isinstance(width, int):
        budget.need(width, "padding a string")
    return args


def _check_expandtabs(budget: _Budget, owner: Any, args: _Args, kwargs: _Kwargs) -> _Args:
    size = _param(args, kwargs, 0, "tabsize", 8)
    if isinstance(size, int):
        tab = "\t" if isinstance(owner, str) else b"\t"
        budget.need(len(owner) + owner.count(tab) * max(size, 0), "expandtabs")
    return args


def _check_replace(budget: _Budget, owner: Any, args: _Args, kwargs: _Kwargs) -> _Args:
    old, new = _param(args, kwargs, 0, "old", None), _param(args, kwargs, 1, "new", None)
    count = _param(args, kwargs, 2, "count", -1)
    if isinstance(old, str | bytes) and isinstance(new, str | bytes):
        budget.need(_replaced_size(owner, old, new, count), "replace")
    return args


def _replaced_size(text: Any, old: Any, new: Any, count: Any) -> int:
    found = len(text) + 1 if not old else text.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(len(new) - len(old), 0)


def _check_join(budget: _Budget, owner: Any, args: _Args, kwargs: _Kwargs) -> _Args:
    if not args:
        return args
    items = _materialize(budget, args[0])
    size = sum(len(item) if isinstance(item, str | bytes) else budget.weigh(item) for item in items)
    budget.need(size + len(owner) * max(len(items) - 1, 0), "join")
    return (items, *args[1:])


def _check_translate(budget: _Budget, owner: Any, args: _Args, kwargs: _Kwargs) -> _Args:
    table = _param(args, kwargs, 0, "table", None)
    if isinstance(table, Mapping):
        budget.need(budget.weigh(table), "translate")
        longest = max((len(v) for v in table.values() if isinstance(v, str)), default=1)
        budget.need(len(owner) * max(longest, 1), "translate")
    return args


def _check_split(budget: _Budget, owner: Any, args: _Args, kwargs: _Kwargs) -> _Args:
    if 17 * len(owner) <= budget.limits.value_chars:
        return args  # even one part per character fits
    sep = _param(args, kwargs, 0, "sep", None)
    limit = _param(args, kwargs, 1, "maxsplit", -1)
    if sep is None:
        spaces = _SPACES if isinstance(owner, str) else _BYTE_SPACES
        parts = 1 + sum(owner.count(space) for space in spaces)
    elif isinstance(sep, str | bytes) and sep:
        parts = owner.count(sep) + 1
    else:
        return args
    if isinstance(limit, int) and limit >= 0:
        parts = min(parts, limit + 1)
    budget.need(len(owner) + 16 * parts, "split")
    return args


def _check_splitlines(budget: _Budget, owner: Any, args: _Args, kwargs: _Kwargs) -> _Args:
    if 17 * len(owner) > budget.limits.value_chars:
        breaks = _LINE_BREAKS if isinstance(owner, str) else _BYTE_LINE_BREAKS
        parts = 1 + sum(owner.count(mark) for mark in breaks)
        budget.need(len(owner) + 16 * parts, "splitlines")
    return args


def _check_fromkeys(budget: _Budget, owner: Any, args: _Args, kwargs: _Kwargs) -> _Args:
    keys = _param(args, kwargs, 0, "iterable", ())
    if hasattr(keys, "__len__"):
        budget.need(16 * len(keys), "fromkeys")
    return args


def _check_to_bytes(budget: _Budget, owner: Any, args: _Args, kwargs: _Kwargs) -> _Args:
    length = _param(args, kwargs, 0, "length", 1)
    if isinstance(length, int):
        budget.need(length, "to_bytes")
    return args


_MethodCheck = Callable[[_Budget, Any, _Args, _Kwargs], _Args]
_METHOD_CHECKS: dict[str, _MethodCheck] = {
    "center": _check_width,
    "ljust": _check_width,
    "rjust": _check_width,
    "zfill": _check_width,
    "expandtabs": _check_expandtabs,
    "replace": _check_replace,
    "join": _check_join,
    "translate": _check_translate,
    "split": _check_split,
    "rsplit": _check_split,
    "splitlines": _check_splitlines,
    "fromkeys": _check_fromkeys,
    "to_bytes": _check_to_bytes,
}


def _materialize(budget: _Budget, iterable: Any) -> list[Any]:
    """``list(iterable)``, a step per item for a lazy one, refusing an oversized one."""
    if isinstance(iterable, str):
        budget.need(9 * len(iterable), "a list of characters")
    if isinstance(iterable, list | tuple | str | dict | range):
        items = list(iterable)
    else:
        items = []
        for item in iterable:
            items.append(item)
            if len(items) % 1024 == 0:
                budget.tick()
                budget.need(8 * len(items), "a sequence")
    budget.need(8 * len(items), "a sequence")
    return items


# --- operators ------------------------------------------------------------------------------


def _check_binop(budget: _Budget, operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(count, int) and not isinstance(seq, int | float):
                if isinstance(seq, str | bytes):
                    budget.need(len(seq) * max(count, 0), "repeating a string")
                elif isinstance(seq, list | tuple):
                    budget.need((budget.weigh(seq) - 8) * max(count, 0), "repeating a list")
        if isinstance(left, int) and isinstance(right, int):
            _check_bits(left.bit_length() + right.bit_length())
    elif operator == "+":
        if isinstance(left, str | bytes) and isinstance(right, str | bytes):
            budget.need(len(left) + len(right), "+")
        elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
            budget.need(budget.weigh(left) + budget.weigh(right), "+")
    elif operator == "%":
        if isinstance(left, str | bytes):
            _check_percent(budget, left, right)
    elif (
        operator == "**"
        and isinstance(left, int)
        and isinstance(right, int)
        and right > 0
        and abs(left) > 1
    ):
        _check_bits(left.bit_length() * right)


def _check_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise _Stop(f"the template would build a {bits:,}-bit integer (limit {MAX_INT_BITS:,})")


# --- the template's own checkpoints (inserted into the parsed template) ---------------------

_STEP = "serapeum step"
_OUT = "serapeum out"
_VALUE = "serapeum value"
_CONCAT = "serapeum concat"
_PLUS = "serapeum plus"
_COMPARE = "serapeum compare"
_ITER = "serapeum iter"


def _step(text_chars: int) -> None:
    """At the start of every loop iteration: a step, and the text the body writes."""
    budget = _enter()
    budget.allocated += text_chars
    if budget.allocated > budget.allocated_limit:
        budget.charge(0)


def _out(value: Any) -> Any:
    """Every ``{{ expression }}`` written, at any level (macros and captured blocks too)."""
    budget = _enter()
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
    return _enter().account(value)


@pass_eval_context
def _concat(eval_ctx: Any, *parts: Any) -> str:
    """``~``: the pieces' sizes are checked before they are joined."""
    budget = _enter()
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
    budget = _enter()
    if type(first) is str and all(type(item) is str for item in rest):
        size = len(first) + sum(map(len, rest))
        if size > budget.value_limit:
            budget.need(size, "+")
        budget.charge(size)
        return first + "".join(rest)
    total = first
    for item in rest:
        _check_binop(budget, "+", total, item)
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
    _enter()
    result = _COMPARISONS[op](left, right)
    for index in range(0, len(chain), 2):
        if not result:
            break
        left, right = right, chain[index + 1]
        result = _COMPARISONS[chain[index]](left, right)
    return result


def _iterate(items: Any) -> Any:
    """The iterable of a ``{% for ... if ... %}`` loop, whose skipped items never reach the body."""
    budget = _budget()
    return _BoundedIterator(iter(items), budget)


_INTERNAL_FILTERS: dict[str, Callable[..., Any]] = {
    _STEP: _step,
    _OUT: _out,
    _VALUE: _value,
    _CONCAT: _concat,
    _PLUS: _plus,
    _COMPARE: _compare,
    _ITER: _iterate,
}


def _internal(name: str, node: Any, *args: Any) -> nodes.Filter:
    return nodes.Filter(node, name, list(args), [], None, None, lineno=node.lineno)


def _is_constant(node: nodes.Node) -> bool:
    if isinstance(node, nodes.Const | nodes.TemplateData):
        return True
    if isinstance(node, nodes.List | nodes.Tuple):
        return all(_is_constant(item) for item in node.items)
    if isinstance(node, nodes.Dict):
        return all(_is_constant(p.key) and _is_constant(p.value) for p in node.items)
    return False


def _small_literal(node: nodes.Node) -> bool:
    if not isinstance(node, nodes.Const):
        return False
    value = node.value
    return (
        value is None
        or isinstance(value, int | float)
        or (isinstance(value, str) and len(value) <= 256)
    )


def _bounded_by_literal(node: nodes.Compare) -> bool:
    """A single comparison with a short literal (``role == 'user'``): it costs no more than
    the literal is long, so it needs no checkpoint. ``'x' in value`` is not one of these."""
    if len(node.ops) != 1:
        return False
    (operand,) = node.ops
    if operand.op in ("in", "notin"):
        return _small_literal(operand.expr)
    return _small_literal(node.expr) or _small_literal(operand.expr)


def _static_text(body: list[nodes.Node]) -> int:
    """The literal text a loop body can write per iteration (inner loops count their own)."""
    total = 0
    pending: list[nodes.Node] = list(body)
    while pending:
        node = pending.pop()
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                if isinstance(child, nodes.TemplateData):
                    total += len(child.data)
                elif isinstance(child, nodes.Const):
                    total += len(str(child.value))
        elif isinstance(node, nodes.For):
            pending.extend(node.else_)
        elif not isinstance(node, nodes.Macro):
            pending.extend(node.iter_child_nodes())
    return total


class _Checkpoints(NodeTransformer):
    """Rewrites a parsed template so everything that can repeat or grow passes a checkpoint."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        step = nodes.ExprStmt(
            _internal(_STEP, nodes.Const(_static_text(node.body), lineno=node.lineno)),
            lineno=node.lineno,
        )
        node.body.insert(0, step)
        if node.test is not None:
            node.iter = _internal(_ITER, node.iter)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            child if isinstance(child, nodes.TemplateData | nodes.Const) else _internal(_OUT, child)
            for child in node.nodes
        ]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _internal(_CONCAT, node.nodes[0], *node.nodes[1:])

    def visit_Add(self, node: nodes.Add) -> nodes.Node:
        operands: list[nodes.Expr] = []
        current: nodes.Expr = node
        while isinstance(current, nodes.Add):  # a + b + c parses as ((a + b) + c)
            operands.append(current.right)
            current = current.left
        operands.append(current)
        first, *rest = (self.visit(operand) for operand in reversed(operands))
        return _internal(_PLUS, first, *rest)

    def visit_Compare(self, node: nodes.Compare) -> nodes.Node:
        self.generic_visit(node)
        if _bounded_by_literal(node):
            return node
        chain: list[nodes.Expr] = []
        for operand in node.ops:
            chain += [nodes.Const(operand.op, lineno=node.lineno), operand.expr]
        return _internal(_COMPARE, node.expr, *chain)

    def _literal(self, node: nodes.Expr) -> nodes.Node:
        self.generic_visit(node)
        return node if _is_constant(node) else _internal(_VALUE, node)

    visit_List = _literal
    visit_Dict = _literal

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:
        return self._literal(node) if node.ctx == "load" else self.generic_visit(node)

    def visit_Getitem(self, node: nodes.Getitem) -> nodes.Node:
        self.generic_visit(node)
        # Jinja compiles a slice to plain Python, bypassing the sandbox's getitem.
        return _internal(_VALUE, node) if isinstance(node.arg, nodes.Slice) else node

    def visit_AssignBlock(self, node: nodes.AssignBlock) -> nodes.Node:
        self.generic_visit(node)
        node.filter = self._capture(node.filter, node.lineno)
        return node

    def visit_FilterBlock(self, node: nodes.FilterBlock) -> nodes.Node:
        self.generic_visit(node)
        node.filter = self._capture(node.filter, node.lineno)
        return node

    @staticmethod
    def _capture(chain: nodes.Filter | None, lineno: int) -> nodes.Filter:
        """Check a captured block's text before the block's own filters see it."""
        check = nodes.Filter(None, _VALUE, [], [], None, None, lineno=lineno)
        if chain is None:
            return check
        innermost = chain
        while innermost.node is not None:
            innermost = innermost.node  # type: ignore[assignment]
        innermost.node = check
        return chain


def _limit_tokens(stream: TokenStream) -> Iterator[Token]:
    for count, token in enumerate(stream, 1):
        if count > MAX_TEMPLATE_TOKENS:
            raise _Stop(f"the template has more than {MAX_TEMPLATE_TOKENS:,} tokens")
        yield token


def _template_depth(tree: nodes.Node) -> int:
    deepest = 0
    pending: list[tuple[nodes.Node, int]] = [(tree, 1)]
    while pending:
        node, depth = pending.pop()
        deepest = max(deepest, depth)
        if depth > MAX_TEMPLATE_DEPTH:
            break
        pending.extend((child, depth + 1) for child in node.iter_child_nodes())
    return deepest


# --- the filters, tests and globals a template may use --------------------------------------


def _filter_check(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(check: Callable[..., Any]) -> Callable[..., Any]:
        _FILTER_CHECKS.setdefault(name, []).append(check)
        return check

    return register


_FilterCheck = Callable[[_Budget, Any, _Args, _Kwargs], Any]
_FILTER_CHECKS: dict[str, list[_FilterCheck]] = {}


@_filter_check("center")
def _center_check(budget: _Budget, value: Any, args: _Args, kwargs: _Kwargs) -> Any:
    width = _param(args, kwargs, 0, "width", 80)
    if isinstance(width, int):
        budget.need(width, "center")
    return value


@_filter_check("indent")
def _indent_check(budget: _Budget, value: Any, args: _Args, kwargs: _Kwargs) -> Any:
    width = _param(args, kwargs, 0, "width", 4)
    prefix = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    budget.need(prefix, "indent")
    text = str(value)
    lines = 1 + sum(text.count(mark) for mark in _LINE_BREAKS)
    budget.need(len(text) + max(prefix, 0) * lines, "indent")
    return value


@_filter_check("join")
def _join_check(budget: _Budget, value: Any, args: _Args, kwargs: _Kwargs) -> Any:
    items = _materialize(budget, value)
    separator = _param(args, kwargs, 0, "d", "")
    attribute = _param(args, kwargs, 1, "attribute", None)
    size = sum(len(item) if isinstance(item, str) else budget.weigh(item) for item in items)
    if attribute is not None:
        size += 64 * len(items)
    budget.need(size + len(str(separator)) * max(len(items) - 1, 0), "join")
    return items


@_filter_check("replace")
def _replace_check(budget: _Budget, value: Any, args: _Args, kwargs: _Kwargs) -> Any:
    old, new = _param(args, kwargs, 0, "old", ""), _param(args, kwargs, 1, "new", "")
    count = _param(args, kwargs, 2, "count", None)
    budget.need(_replaced_size(str(value), str(old), str(new), count), "replace")
    return value


@_filter_check("tojson")
def _tojson_check(budget: _Budget, value: Any, args: _Args, kwargs: _Kwargs) -> Any:
    indent = _param(args, kwargs, 0, "indent", None)
    step = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    if step > 64:
        raise _Stop(f"tojson indent of {step:,} characters (limit 64)")
    # Each line is indented once per level. (Escapes can make the text up to twelve times
    # longer than the value; the result is checked when it is made.)
    weight = budget.weigh(value)
    budget.need(weight + (weight // 2) * max(step, 0) * budget.depth(value), "tojson")
    return value


@_filter_check("batch")
def _batch_check(budget: _Budget, value: Any, args: _Args, kwargs: _Kwargs) -> Any:
    count = _param(args, kwargs, 0, "linecount", 1)
    fill = _param(args, kwargs, 1, "fill_with", None)
    if isinstance(count, int) and fill is not None:
        budget.need(count * (8 + budget.weigh(fill)), "batch")
    return value


@_filter_check("slice")
def _slice_check(budget: _Budget, value: Any, args: _Args, kwargs: _Kwargs) -> Any:
    count = _param(args, kwargs, 0, "slices", 1)
    if isinstance(count, int):
        budget.need(16 * count, "slice")
    return value


@_filter_check("wordwrap")
def _wordwrap_check(budget: _Budget, value: Any, args: _Args, kwargs: _Kwargs) -> Any:
    text = _slow_input(budget, value, "wordwrap")
    wrap = _param(args, kwargs, 2, "wrapstring", None)
    if isinstance(wrap, str):
        budget.need(len(text) + (len(text) + 1) * len(wrap), "wordwrap")
    return value


@_filter_check("urlize")
def _urlize_check(budget: _Budget, value: Any, args: _Args, kwargs: _Kwargs) -> Any:
    text = _slow_input(budget, value, "urlize")
    extra = sum(
        len(str(_param(args, kwargs, index, name, None) or ""))
        for index, name in ((2, "target"), (3, "rel"))
    )
    budget.need(2 * len(text) + (len(text) // 3 + 1) * (64 + extra), "urlize")
    return value


def _word_list_check(name: str) -> _FilterCheck:
    # Pure Python over a list of every word: slow, and many times the text in memory.
    def check(budget: _Budget, value: Any, args: _Args, kwargs: _Kwargs) -> Any:
        _slow_input(budget, value, name)
        return value

    return check


for _name in ("title", "wordcount", "striptags"):
    _filter_check(_name)(_word_list_check(_name))


@_filter_check("list")
@_filter_check("sort")
@_filter_check("slice")
@_filter_check("batch")
def _characters_check(budget: _Budget, value: Any, args: _Args, kwargs: _Kwargs) -> Any:
    if isinstance(value, str):  # a list of one string per character
        budget.need(9 * len(value), "a list of characters")
    return value


@_filter_check("pprint")
def _pprint_check(budget: _Budget, value: Any, args: _Args, kwargs: _Kwargs) -> Any:
    if budget.weigh(value) > SLOW_FILTER_CHARS:
        raise _Stop(f"pprint of a value over {SLOW_FILTER_CHARS:,} characters")
    return value


def _slow_input(budget: _Budget, value: Any, name: str) -> str:
    text = str(value)
    if len(text) > SLOW_FILTER_CHARS:
        raise _Stop(f"{name} of {len(text):,} characters (limit {SLOW_FILTER_CHARS:,})")
    return text


def _format_filter(value: Any, *args: Any, **kwargs: Any) -> str:
    """Jinja's ``format`` (``value % args``) with the widths and sizes checked first."""
    if args and kwargs:
        raise FilterArgumentError("can't handle positional and keyword arguments at the same time")
    text = soft_str(value)
    values = kwargs or args
    _check_percent(_budget(), text, values)
    return text % values  # type: ignore[no-any-return]


@pass_environment
def _sum_filter(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    """Jinja's ``sum``; anything but numbers is added one step at a time (``sum`` of lists is
    quadratic and would run in C, past the deadline)."""
    budget = _budget()
    items = _materialize(budget, iterable)
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
        _check_binop(budget, "+", total, item)
        total = budget.account(total + item)
    return total


def _lipsum(n: Any = 5, html: Any = True, min: Any = 20, max: Any = 100) -> str:
    budget = _budget()
    paragraphs, longest = n, max
    if isinstance(paragraphs, int) and isinstance(longest, int):
        budget.need(abs(paragraphs) * abs(longest) * 12, "lipsum")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)  # type: ignore[no-any-return]


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    checks = _FILTER_CHECKS.get(name, [])
    offset = 0 if _PassArg.from_obj(func) is None else 1  # type: ignore[arg-type]

    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _enter()
        if checks and len(args) > offset:
            value, rest = args[offset], args[offset + 1 :]
            for check in checks:
                value = check(budget, value, rest, kwargs)
            args = (*args[:offset], value, *rest)
        return budget.account(func(*args, **kwargs))

    return bounded


def _bounded_test(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _enter()
        return func(*args, **kwargs)

    return bounded


def _raise_exception(message: Any) -> None:
    raise _Refusal(str(message)[:500])


def _strftime_now(fmt: Any) -> str:
    return datetime.now().strftime(str(fmt)[:100])


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with every way to spend time or memory checkpointed."""

    intercepted_binops: ClassVar[frozenset[str]] = frozenset(  # type: ignore[misc]
        {"+", "-", "*", "/", "//", "%", "**"}
    )

    def __init__(self) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.loopcontrols"],
            autoescape=False,
            cache_size=0,
        )
        filters = dict(FILTERS, format=_format_filter, sum=_sum_filter)
        self.filters = {name: _bounded_filter(name, f) for name, f in filters.items()}
        self.filters.update(_INTERNAL_FILTERS)
        self.tests = {name: _bounded_test(t) for name, t in self.tests.items()}  # type: ignore[arg-type]
        self.globals.update(
            range=safe_range,
            lipsum=_lipsum,
            namespace=_Namespace,
            raise_exception=_raise_exception,
            strftime_now=_strftime_now,
        )

    def _tokenize(
        self, source: str, name: str | None, filename: str | None = None, state: str | None = None
    ) -> TokenStream:
        stream = super()._tokenize(source, name, filename, state)
        return TokenStream(_limit_tokens(stream), name, filename)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        depth = _template_depth(tree)
        if depth > MAX_TEMPLATE_DEPTH:
            raise _Stop(f"the template nests more than {MAX_TEMPLATE_DEPTH} levels deep")
        tree = _Checkpoints().visit(tree)
        tree.set_environment(self)
        return tree  # type: ignore[no-any-return]

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # Jinja would return a silent Undefined; a template that reaches for Python
        # internals is hostile, so refuse it outright.
        raise SecurityError(f"access to {attribute!r} of a {type(obj).__name__} is not allowed")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if not isinstance(value, MethodType | BuiltinMethodType) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        owner = value.__self__
        if not isinstance(owner, str):
            return None
        is_map = value.__name__ == "format_map"
        environment = self

        def checked_format(*args: Any, **kwargs: Any) -> str:
            budget = _budget()
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs = args[0]
                args = ()
            formatter: _CheckedFormatter
            if isinstance(owner, Markup):
                formatter = _CheckedEscapeFormatter(environment, budget, escape=owner.escape)
            else:
                formatter = _CheckedFormatter(environment, budget)
            return type(owner)(formatter.vformat(owner, args, kwargs))

        return checked_format

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _enter()
        if not __self.is_safe_callable(__obj):
            raise SecurityError(f"{__obj!r} is not safely callable")
        if isinstance(__obj, MethodType | BuiltinMethodType):
            owner = __obj.__self__
            wrapped = __self.wrap_str_format(__obj)  # Jinja before 3.1.5 formats here
            if wrapped is not None:
                __obj = wrapped
            elif isinstance(owner, str | bytes | bytearray | int | type):
                check = _METHOD_CHECKS.get(__obj.__name__)
                if check is not None:
                    args = check(budget, owner, args, kwargs)
        return budget.account(__context.call(__obj, *args, **kwargs))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _enter()
        if operator == "+" and type(left) is str and type(right) is str:  # the common case
            size = len(left) + len(right)
            if size > budget.value_limit:
                budget.need(size, "+")
            budget.charge(size)
            return left + right
        _check_binop(budget, operator, left, right)
        return budget.account(self.binop_table[operator](left, right))


_ENVIRONMENT: list[_BoundedSandbox] = []


def _environment() -> _BoundedSandbox:
    if not _ENVIRONMENT:
        _ENVIRONMENT.append(_BoundedSandbox())
    return _ENVIRONMENT[0]


@functools.lru_cache(maxsize=32)
def _compiled(template: str) -> Any:
    return _environment().from_string(template)


def _compile(template: str) -> Any:
    if len(template) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateError(
            f"the model's chat template is {len(template):,} characters (limit "
            f"{MAX_TEMPLATE_CHARS:,}); refusing it: {_ADVICE}"
        )
    try:
        return _compiled(template)
    except Exception as exc:
        raise _template_error(exc, compiling=True) from _without_traceback(exc)


def _without_traceback(exc: BaseException) -> BaseException:
    # The traceback holds the render's frames and every value they built; drop it so an
    # error kept by the caller does not keep them alive.
    exc.__context__ = exc.__cause__ = None
    return exc.with_traceback(None)


def _template_error(exc: BaseException, *, compiling: bool = False) -> ChatTemplateError:
    detail = str(exc)
    if len(detail) > 300:
        detail = detail[:300] + "..."
    if isinstance(exc, _Refusal):
        return ChatTemplateError(
            f"the chat template refused the conversation: {detail}; change the conversation, "
            f"or {_ADVICE}"
        )
    if isinstance(exc, _Stop | SecurityError):
        what = f"was stopped by the sandbox ({detail})"
    elif isinstance(exc, RecursionError):
        what = "nests or recurses too deeply to " + ("compile" if compiling else "render")
    elif isinstance(exc, MemoryError):
        what = "ran out of memory"
    elif isinstance(exc, TemplateSyntaxError):
        what = f"does not compile (line {exc.lineno}: {detail})"
    elif compiling:
        what = f"does not compile ({type(exc).__name__}: {detail})"
    else:
        what = f"failed ({type(exc).__name__}: {detail})"
    return ChatTemplateError(f"the model's chat template {what}; {_ADVICE}")


def render_chat_template(
    template: str,
    messages: Sequence[Message],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """Render ``template`` as Hugging Face does, within the sandbox's bounds.

    Raises ``ChatTemplateError`` for anything that goes wrong: a template that does not
    compile, refuses the conversation (``raise_exception``), fails, or reaches a bound.
    """
    start = time.monotonic()  # compiling (once per template) counts against the time limit
    compiled = _compile(template)
    turns = [{"role": m.role.value, "content": m.content} for m in messages]
    chars = sum(len(turn["content"]) + len(turn["role"]) for turn in turns)
    budget = _Budget(_Limits.for_input(chars + len(bos_token) + len(eos_token), len(turns)), start)
    token = _CURRENT.set(budget)
    pieces: Iterator[str] | None = None
    try:
        pieces = compiled.generate(
            messages=turns,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
        out: list[str] = []
        for piece in pieces:
            budget.emit(len(piece))
            out.append(piece)
        return "".join(out)
    except Exception as exc:
        raise _template_error(exc) from _without_traceback(exc)
    finally:
        if pieces is not None:
            pieces.close()  # type: ignore[attr-defined]
        _CURRENT.reset(token)


def _refused(error: ChatTemplateError) -> bool:
    return isinstance(error.__cause__, _Refusal)


_TEST_CONVERSATIONS: tuple[tuple[Message, ...], ...] = (
    (Message.user("Hello"),),
    (Message.system("Be brief."), Message.user("Hello")),
    (Message.user("Hello"), Message.assistant("Hi."), Message.user("Again")),
    (
        Message.system("Be brief."),
        Message.user("Hello"),
        Message.assistant("Hi."),
        Message.user("Again"),
    ),
)


def _check_template(template: str, info: ModelInfo) -> None:
    """Render a few conversation shapes now, so a broken template fails at construction.

    The one-message conversation must render. Other shapes may be refused through
    ``raise_exception`` (many templates refuse a system message, or check alternation);
    any other failure is an error now rather than at the first ``chat()``.
    """
    for index, conversation in enumerate(_TEST_CONVERSATIONS):
        try:
            render_chat_template(
                template, conversation, bos_token=info.bos_token, eos_token=info.eos_token
            )
        except ChatTemplateError as exc:
            if index and _refused(exc):
                continue
            if not index:
                raise
            shape = ", ".join(m.role.value for m in conversation)
            raise ChatTemplateError(f"{exc} (rendering a test conversation: {shape})") from (
                exc.__cause__
            )


def template_formatter(info: ModelInfo) -> PromptFormatter:
    """A formatter that renders the chat template in ``info`` (which must have one)."""
    template = info.chat_template
    if not template:
        raise ChatTemplateError("the model carries no chat template")
    _check_template(template, info)  # fail now, not at the first call

    def to_prompt(messages: Sequence[Message], system_prompt: str | None = None) -> str:
        turns = list(messages)
        if system_prompt is not None and (not turns or turns[0].role is not MessageRole.SYSTEM):
            turns.insert(0, Message(role=MessageRole.SYSTEM, content=system_prompt))
        return render_chat_template(
            template, turns, bos_token=info.bos_token, eos_token=info.eos_token
        )

    def completion(text: str, system_prompt: str | None = None) -> str:
        return to_prompt([Message(role=MessageRole.USER, content=text)], system_prompt)

    stops = tuple(t for t in (info.eot_token, info.eos_token) if t)
    return PromptFormatter(
        name="gguf-chat-template",
        messages_to_prompt=to_prompt,
        completion_to_prompt=completion,
        stop=tuple(dict.fromkeys(stops)),
        prompt_starts_with_bos=bool(info.bos_token) and info.bos_token in template,
        description="the chat template embedded in the GGUF file, rendered in a sandbox",
    )
