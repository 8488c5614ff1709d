"""What one render has spent (steps, time, characters), and how a checkpoint finds it.

Every checkpoint, filter and call of a render charges the same ``Budget``; it is found
through a context variable, so compiled templates stay shared between renders and threads.
"""

from __future__ import annotations

import time
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from contextvars import ContextVar
from typing import Any

from jinja2 import nodes
from jinja2.utils import Namespace

from serapeum.llama_cpp.template_sandbox.limits import MAX_INT_BITS, MAX_VALUE_DEPTH, Limits, _Stop

HUGE = 1 << 62
_monotonic = time.monotonic


class Budget:
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

    def __init__(self, limits: Limits, start: float) -> None:
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
            return BoundedIterator(value, self)
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


class BoundedIterator:
    """A lazy filter result (``map``, ``select``, ``batch``, ...): each item is a step."""

    __slots__ = ("_budget", "_items")

    def __init__(self, items: Iterator[Any], budget: Budget) -> None:
        self._items = items
        self._budget = budget

    def __iter__(self) -> BoundedIterator:
        return self

    def __next__(self) -> Any:
        item = next(self._items)
        self._budget.tick()
        return self._budget.account(item)


CURRENT: ContextVar[Budget | None] = ContextVar("serapeum_template_budget", default=None)


def current_budget() -> Budget:
    budget = CURRENT.get()
    if budget is None:
        # Outside a render: Jinja's compile-time constant folding asks us to evaluate
        # something. Refusing makes it evaluate at render time, under the bounds.
        raise nodes.Impossible()
    return budget


def enter() -> Budget:
    """The render's budget, after counting a step: where every checkpoint starts."""
    budget = CURRENT.get()
    if budget is None:
        raise nodes.Impossible()  # as in current_budget()
    budget.steps += 1
    if budget.steps > budget.limits.steps or _monotonic() > budget.deadline:
        budget.overrun()
    return budget


def _count(size: int) -> str:
    return "an unbounded number of" if size >= HUGE else f"{size:,}"
