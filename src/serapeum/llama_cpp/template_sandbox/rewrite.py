"""The parse-time bounds on a template, and the rewriter that inserts its checkpoints.

The template's source is bounded in tokens and in nesting depth before anything is compiled;
then the parsed tree is rewritten so that everything that can repeat or grow calls one of the
checkpoints (``checkpoints``) before Jinja compiles it to Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jinja2 import nodes
from jinja2.lexer import Token, TokenStream
from jinja2.visitor import NodeTransformer

from serapeum.llama_cpp.template_sandbox.checkpoints import (
    COMPARE,
    CONCAT,
    ITER,
    OUT,
    PLUS,
    STEP,
    VALUE,
)
from serapeum.llama_cpp.template_sandbox.limits import (
    MAX_TEMPLATE_DEPTH,
    MAX_TEMPLATE_TOKENS,
    _Stop,
)


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


class Checkpoints(NodeTransformer):
    """Rewrites a parsed template so everything that can repeat or grow passes a checkpoint."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        step = nodes.ExprStmt(
            _internal(STEP, nodes.Const(_static_text(node.body), lineno=node.lineno)),
            lineno=node.lineno,
        )
        node.body.insert(0, step)
        if node.test is not None:
            node.iter = _internal(ITER, node.iter)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            child if isinstance(child, nodes.TemplateData | nodes.Const) else _internal(OUT, child)
            for child in node.nodes
        ]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _internal(CONCAT, node.nodes[0], *node.nodes[1:])

    def visit_Add(self, node: nodes.Add) -> nodes.Node:
        operands: list[nodes.Expr] = []
        current: nodes.Expr = node
        while isinstance(current, nodes.Add):  # a + b + c parses as ((a + b) + c)
            operands.append(current.right)
            current = current.left
        operands.append(current)
        first, *rest = (self.visit(operand) for operand in reversed(operands))
        return _internal(PLUS, first, *rest)

    def visit_Compare(self, node: nodes.Compare) -> nodes.Node:
        self.generic_visit(node)
        if _bounded_by_literal(node):
            return node
        chain: list[nodes.Expr] = []
        for operand in node.ops:
            chain += [nodes.Const(operand.op, lineno=node.lineno), operand.expr]
        return _internal(COMPARE, node.expr, *chain)

    def _literal(self, node: nodes.Expr) -> nodes.Node:
        self.generic_visit(node)
        return node if _is_constant(node) else _internal(VALUE, node)

    visit_List = _literal
    visit_Dict = _literal

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:
        return self._literal(node) if node.ctx == "load" else self.generic_visit(node)

    def visit_Getitem(self, node: nodes.Getitem) -> nodes.Node:
        self.generic_visit(node)
        # Jinja compiles a slice to plain Python, bypassing the sandbox's getitem.
        return _internal(VALUE, node) if isinstance(node.arg, nodes.Slice) else node

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
        check = nodes.Filter(None, VALUE, [], [], None, None, lineno=lineno)
        if chain is None:
            return check
        innermost = chain
        while innermost.node is not None:
            innermost = innermost.node  # type: ignore[assignment]
        innermost.node = check
        return chain


def limit_tokens(stream: TokenStream) -> Iterator[Token]:
    for count, token in enumerate(stream, 1):
        if count > MAX_TEMPLATE_TOKENS:
            raise _Stop(f"the template has more than {MAX_TEMPLATE_TOKENS:,} tokens")
        yield token


def template_depth(tree: nodes.Node) -> int:
    deepest = 0
    pending: list[tuple[nodes.Node, int]] = [(tree, 1)]
    while pending:
        node, depth = pending.pop()
        deepest = max(deepest, depth)
        if depth > MAX_TEMPLATE_DEPTH:
            break
        pending.extend((child, depth + 1) for child in node.iter_child_nodes())
    return deepest
