"""The import graph of ``edgeslim``: no cycles, and no module imports a floor above its own.

The graph is read from the source with :mod:`ast` (nothing is imported). Edges are every
edgeslim-internal import, at module level and inside functions (a function-level import is a
cycle that is merely postponed); imports under ``if TYPE_CHECKING:`` are ignored (they never
run). ``importlib.import_module("edgeslim.x")`` with a literal name counts as an import too.

Edge rule (chosen to avoid false positives): ``from edgeslim.exporters.base import X`` and
``import edgeslim.exporters.base`` are edges to ``edgeslim.exporters.base`` only, not to the
package ``edgeslim.exporters`` whose ``__init__`` Python also runs first. Otherwise every
package ``__init__`` that re-exports its submodules would form a cycle with each of them.
``from edgeslim.exporters import base`` is an edge to the submodule ``edgeslim.exporters.base``;
``from edgeslim.exporters import export`` (a name, not a submodule) is an edge to the package.
A package ``__init__`` importing a name from itself is reported as a self-loop.
"""

from __future__ import annotations

import ast
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "edgeslim"

#: (importing package prefix, forbidden imported package prefixes): the floors of ARCHITECTURE.md.
FLOOR_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("edgeslim.plugin", ("edgeslim.exporters", "edgeslim.device_bench", "edgeslim.cli", "edgeslim.pipelines", "edgeslim.report")),
    ("edgeslim.exporters", ("edgeslim.cli", "edgeslim.pipelines", "edgeslim.report")),
    ("edgeslim.device_bench", ("edgeslim.cli", "edgeslim.pipelines", "edgeslim.report")),
]


def _modules() -> dict[str, Path]:
    """Every module of the package, ``{dotted name: file}``, found with pkgutil without importing."""
    found = {"edgeslim": SRC / "__init__.py"}

    def walk(path: Path, prefix: str) -> None:
        for info in pkgutil.iter_modules([str(path)]):
            name = f"{prefix}.{info.name}"
            if info.ispkg:
                found[name] = path / info.name / "__init__.py"
                walk(path / info.name, name)
            else:
                found[name] = path / f"{info.name}.py"

    walk(SRC, "edgeslim")
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Import statements and ``import_module`` calls anywhere, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.Call)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies inside (``None``: not edgeslim's)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _targets(node: ast.AST, module: str, is_pkg: bool, modules: dict[str, Path]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if (hit := _resolve(alias.name, modules)) is not None:
                yield hit
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            parts = module.split(".")
            anchor = parts if is_pkg else parts[:-1]
            base = ".".join(anchor[: len(anchor) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            hit = _resolve(f"{base}.{alias.name}", modules) if f"{base}.{alias.name}" in modules else _resolve(base, modules)
            if hit is not None:
                yield hit
    elif isinstance(node, ast.Call):
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        first = node.args[0] if node.args else None
        literal = first.value if called == "import_module" and isinstance(first, ast.Constant) else None
        if isinstance(literal, str) and (hit := _resolve(literal, modules)) is not None:
            yield hit


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over edgeslim's own modules."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        graph[name] = {t for node in _import_nodes(tree) for t in _targets(node, name, is_pkg, modules)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, plus self-loops (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _describe(comp: list[str], graph: dict[str, set[str]]) -> str:
    members = set(comp)
    edges = [f"{a} -> {b}" for a in comp for b in sorted(graph[a] & members)]
    return "{" + ", ".join(comp) + "}: " + "; ".join(edges)


def test_the_module_walk_sees_every_source_file() -> None:
    files = {p.resolve() for p in SRC.rglob("*.py")}
    assert files == {p.resolve() for p in _modules().values()}


def test_the_graph_reader_resolves_relative_function_level_and_type_checking_imports() -> None:
    modules = {"edgeslim": Path(), "edgeslim.a": Path(), "edgeslim.a.b": Path(), "edgeslim.a.c": Path(), "edgeslim.d": Path()}
    code = (
        "from typing import TYPE_CHECKING\n"
        "from . import c\n"
        "from .c import thing\n"
        "from .. import d\n"
        "import torch\n"
        "if TYPE_CHECKING:\n    import edgeslim.d\n    from edgeslim import missing\n"
        "def f():\n    from edgeslim.a import helper\n"
        "def g():\n    importlib.import_module('edgeslim.d')\n"
    )
    tree = ast.parse(code)
    got = [t for node in _import_nodes(tree) for t in _targets(node, "edgeslim.a.b", False, modules)]
    assert sorted(got) == ["edgeslim.a", "edgeslim.a.c", "edgeslim.a.c", "edgeslim.d", "edgeslim.d"]
    assert cycles({"x": {"y"}, "y": {"x"}, "z": {"z"}, "w": {"x"}}) == [["x", "y"], ["z"]]


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (module-level or function-level imports):\n" + "\n".join(
        _describe(c, graph) for c in found
    )


@pytest.mark.parametrize(("importer", "forbidden"), FLOOR_RULES)
def test_no_module_imports_a_floor_above_its_own(importer: str, forbidden: tuple[str, ...]) -> None:
    graph = import_graph()
    bad = sorted(
        f"{src} -> {dst}"
        for src, targets in graph.items()
        if src == importer or src.startswith(importer + ".")
        for dst in targets
        if any(dst == f or dst.startswith(f + ".") for f in forbidden)
    )
    assert not bad, f"{importer} must not import {', '.join(forbidden)}:\n" + "\n".join(bad)
