"""Checks on Python methods reachable through the sandbox's call, and on operators.

``str.ljust(10**9)``, ``'x' * 10**9``, ``2 ** 10**9`` and the like build their result in one
C call that no deadline can interrupt, so each is checked against the budget before it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from serapeum.llama_cpp.template_sandbox.budget import Budget
from serapeum.llama_cpp.template_sandbox.formats import check_percent
from serapeum.llama_cpp.template_sandbox.limits import MAX_INT_BITS, _Stop

Args = tuple[Any, ...]
Kwargs = dict[str, Any]


def param(
    args: Sequence[Any], kwargs: Mapping[str, Any], index: int, name: str, default: Any
) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


# --- Python methods -------------------------------------------------------------------------

LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_BYTE_LINE_BREAKS = (b"\n", b"\r")
_SPACES = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)
_BYTE_SPACES = (b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c")


def _check_width(budget: Budget, owner: Any, args: Args, kwargs: Kwargs) -> Args:
    width = param(args, kwargs, 0, "width", 0)
    if isinstance(width, int):
        budget.need(width, "padding a string")
    return args


def _check_expandtabs(budget: Budget, owner: Any, args: Args, kwargs: Kwargs) -> Args:
    size = param(args, kwargs, 0, "tabsize", 8)
    if isinstance(size, int):
        tab = "\t" if isinstance(owner, str) else b"\t"
        budget.need(len(owner) + owner.count(tab) * max(size, 0), "expandtabs")
    return args


def _check_replace(budget: Budget, owner: Any, args: Args, kwargs: Kwargs) -> Args:
    old, new = param(args, kwargs, 0, "old", None), param(args, kwargs, 1, "new", None)
    count = param(args, kwargs, 2, "count", -1)
    if isinstance(old, str | bytes) and isinstance(new, str | bytes):
        budget.need(replaced_size(owner, old, new, count), "replace")
    return args


def replaced_size(text: Any, old: Any, new: Any, count: Any) -> int:
    found = len(text) + 1 if not old else text.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(len(new) - len(old), 0)


def _check_join(budget: Budget, owner: Any, args: Args, kwargs: Kwargs) -> Args:
    if not args:
        return args
    items = materialize(budget, args[0])
    size = sum(len(item) if isinstance(item, str | bytes) else budget.weigh(item) for item in items)
    budget.need(size + len(owner) * max(len(items) - 1, 0), "join")
    return (items, *args[1:])


def _check_translate(budget: Budget, owner: Any, args: Args, kwargs: Kwargs) -> Args:
    table = param(args, kwargs, 0, "table", None)
    if isinstance(table, Mapping):
        budget.need(budget.weigh(table), "translate")
        longest = max((len(v) for v in table.values() if isinstance(v, str)), default=1)
        budget.need(len(owner) * max(longest, 1), "translate")
    return args


def _check_split(budget: Budget, owner: Any, args: Args, kwargs: Kwargs) -> Args:
    if 17 * len(owner) <= budget.limits.value_chars:
        return args  # even one part per character fits
    sep = param(args, kwargs, 0, "sep", None)
    limit = param(args, kwargs, 1, "maxsplit", -1)
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


def _check_splitlines(budget: Budget, owner: Any, args: Args, kwargs: Kwargs) -> Args:
    if 17 * len(owner) > budget.limits.value_chars:
        breaks = LINE_BREAKS if isinstance(owner, str) else _BYTE_LINE_BREAKS
        parts = 1 + sum(owner.count(mark) for mark in breaks)
        budget.need(len(owner) + 16 * parts, "splitlines")
    return args


def _check_fromkeys(budget: Budget, owner: Any, args: Args, kwargs: Kwargs) -> Args:
    keys = param(args, kwargs, 0, "iterable", ())
    if hasattr(keys, "__len__"):
        budget.need(16 * len(keys), "fromkeys")
    return args


def _check_to_bytes(budget: Budget, owner: Any, args: Args, kwargs: Kwargs) -> Args:
    length = param(args, kwargs, 0, "length", 1)
    if isinstance(length, int):
        budget.need(length, "to_bytes")
    return args


_MethodCheck = Callable[[Budget, Any, Args, Kwargs], Args]
METHOD_CHECKS: dict[str, _MethodCheck] = {
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


def materialize(budget: Budget, iterable: Any) -> list[Any]:
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


def check_binop(budget: Budget, operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(count, int) and not isinstance(seq, int | float):
                if isinstance(seq, str | bytes):
                    budget.need(len(seq) * max(count, 0), "repeating a string")
                elif isinstance(seq, list | tuple):
                    budget.need((budget.weigh(seq) - 8) * max(count, 0), "repeating a list")
        if isinstance(left, int) and isinstance(right, int):
            check_bits(left.bit_length() + right.bit_length())
    elif operator == "+":
        if isinstance(left, str | bytes) and isinstance(right, str | bytes):
            budget.need(len(left) + len(right), "+")
        elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
            budget.need(budget.weigh(left) + budget.weigh(right), "+")
    elif operator == "%":
        if isinstance(left, str | bytes):
            check_percent(budget, left, right)
    elif (
        operator == "**"
        and isinstance(left, int)
        and isinstance(right, int)
        and right > 0
        and abs(left) > 1
    ):
        check_bits(left.bit_length() * right)


def check_bits(bits: int) -> None:
    """Refuse, before it is built, an integer of ``bits`` bits if it is too large."""
    if bits > MAX_INT_BITS:
        raise _Stop(f"the template would build a {bits:,}-bit integer (limit {MAX_INT_BITS:,})")
