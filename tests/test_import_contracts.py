"""The layers, checked on the source: core never imports the engine, plugins import only core,
the engine reaches the built-in backend only through the seam, and no module cycles.

Every import counts: module level, inside functions, and under ``TYPE_CHECKING`` (a cycle
that only type checkers see is still two modules that cannot be understood apart).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE_ROOTS = [ROOT / "src", *sorted((ROOT / "plugins").glob("*/src"))]
BACKEND = "serapeum.llama_cpp.backend"
# Engine modules that may import the built-in backend's internals, and why.
BACKEND_INTERNALS_ALLOWED = {
    # The checked load runs the backend's own loader in a child process to probe a file.
    "serapeum.llama_cpp.checked_load",
    # The conformance kit reads a family's real vocabulary (vocab_only, no weights) with
    # llama.cpp's tokenizer; the seam serves loaded models, not vocabularies.
    "serapeum.llama_cpp.testing.conformance",
}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _all_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for root in SOURCE_ROOTS:
        for path in root.rglob("*.py"):
            modules[_module_name(path, root)] = path
    return modules


MODULES = _all_modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> Iterator[str]:
    """Every module ``name`` imports (absolute or relative), wherever the import statement is."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield candidate if candidate in MODULES else base


def _graph() -> dict[str, set[str]]:
    return {name: {i for i in _imports(name) if i in MODULES} for name in MODULES}


GRAPH = _graph()


def _top_package(name: str) -> str:
    return name.split(".")[0] if not name.startswith("serapeum.") else ".".join(name.split(".")[:2])


def test_the_scan_sees_the_layers() -> None:
    """Guard against a scan that finds nothing (and so could never fail)."""
    assert "serapeum.core.plugins.backend_api" in MODULES
    assert "serapeum.llama_cpp.llm" in MODULES
    assert f"{BACKEND}.generation" in MODULES
    assert "serapeum_backend_server.model" in MODULES
    assert "serapeum.core.plugins" in GRAPH["serapeum.llama_cpp.llm"] or any(
        i.startswith("serapeum.core") for i in GRAPH["serapeum.llama_cpp.llm"]
    )


def test_core_never_imports_the_engine_or_a_plugin() -> None:
    offenders = {
        (module, imported)
        for module, imports in GRAPH.items()
        if module.startswith("serapeum.core")
        for imported in imports
        if not imported.startswith("serapeum.core")
    }
    assert not offenders, f"core imports outside core: {sorted(offenders)}"


@pytest.mark.parametrize(
    "plugin", sorted({_top_package(m) for m in MODULES if not m.startswith("serapeum.")})
)
def test_a_plugin_imports_only_core_and_itself(plugin: str) -> None:
    offenders = {
        (module, imported)
        for module, imports in GRAPH.items()
        if _top_package(module) == plugin
        for imported in imports
        if not (imported.startswith("serapeum.core") or _top_package(imported) == plugin)
    }
    assert not offenders, f"{plugin} imports beyond serapeum.core: {sorted(offenders)}"


def test_the_engine_reaches_the_backend_only_through_the_seam() -> None:
    """Outside ``serapeum.llama_cpp.backend`` nobody imports its modules (the entry point loads it)."""
    offenders = {
        (module, imported)
        for module, imports in GRAPH.items()
        if module.startswith("serapeum.llama_cpp")
        and not module.startswith(BACKEND)
        and module not in BACKEND_INTERNALS_ALLOWED
        for imported in imports
        if imported.startswith(BACKEND)
    }
    assert not offenders, f"engine modules import backend internals: {sorted(offenders)}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
