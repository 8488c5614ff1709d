"""The sandboxed environment that renders chat templates, with every bound in place.

It bounds the source as it is tokenized and parsed, rewrites the parsed template with its
checkpoints, and routes every call, operator, filter and test through the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from types import BuiltinMethodType, MethodType
from typing import Any, ClassVar

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS
from jinja2.lexer import TokenStream
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from serapeum.llama_cpp.template_sandbox.budget import current_budget, enter
from serapeum.llama_cpp.template_sandbox.checkpoints import INTERNAL_FILTERS
from serapeum.llama_cpp.template_sandbox.checks import METHOD_CHECKS, check_binop
from serapeum.llama_cpp.template_sandbox.filters import (
    GLOBALS,
    REPLACED_FILTERS,
    bounded_filter,
    bounded_test,
)
from serapeum.llama_cpp.template_sandbox.formats import CheckedEscapeFormatter, CheckedFormatter
from serapeum.llama_cpp.template_sandbox.limits import MAX_TEMPLATE_DEPTH, _Stop
from serapeum.llama_cpp.template_sandbox.rewrite import Checkpoints, limit_tokens, template_depth


class BoundedSandbox(ImmutableSandboxedEnvironment):
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
        filters = dict(FILTERS, **REPLACED_FILTERS)
        self.filters = {name: bounded_filter(name, f) for name, f in filters.items()}
        self.filters.update(INTERNAL_FILTERS)
        self.tests = {name: bounded_test(t) for name, t in self.tests.items()}  # type: ignore[arg-type]
        self.globals.update(GLOBALS)

    def _tokenize(
        self, source: str, name: str | None, filename: str | None = None, state: str | None = None
    ) -> TokenStream:
        stream = super()._tokenize(source, name, filename, state)
        return TokenStream(limit_tokens(stream), name, filename)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        depth = template_depth(tree)
        if depth > MAX_TEMPLATE_DEPTH:
            raise _Stop(f"the template nests more than {MAX_TEMPLATE_DEPTH} levels deep")
        tree = Checkpoints().visit(tree)
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
            budget = current_budget()
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs = args[0]
                args = ()
            formatter: CheckedFormatter
            if isinstance(owner, Markup):
                formatter = CheckedEscapeFormatter(environment, budget, escape=owner.escape)
            else:
                formatter = CheckedFormatter(environment, budget)
            return type(owner)(formatter.vformat(owner, args, kwargs))

        return checked_format

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = enter()
        if not __self.is_safe_callable(__obj):
            raise SecurityError(f"{__obj!r} is not safely callable")
        if isinstance(__obj, MethodType | BuiltinMethodType):
            owner = __obj.__self__
            wrapped = __self.wrap_str_format(__obj)  # Jinja before 3.1.5 formats here
            if wrapped is not None:
                __obj = wrapped
            elif isinstance(owner, str | bytes | bytearray | int | type):
                check = METHOD_CHECKS.get(__obj.__name__)
                if check is not None:
                    args = check(budget, owner, args, kwargs)
        return budget.account(__context.call(__obj, *args, **kwargs))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = enter()
        if operator == "+" and type(left) is str and type(right) is str:  # the common case
            size = len(left) + len(right)
            if size > budget.value_limit:
                budget.need(size, "+")
            budget.charge(size)
            return left + right
        check_binop(budget, operator, left, right)
        return budget.account(self.binop_table[operator](left, right))


_ENVIRONMENT: list[BoundedSandbox] = []


def shared_environment() -> BoundedSandbox:
    """The one environment, built on first use (it wraps every filter and test)."""
    if not _ENVIRONMENT:
        _ENVIRONMENT.append(BoundedSandbox())
    return _ENVIRONMENT[0]
