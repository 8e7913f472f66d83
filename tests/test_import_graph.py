"""No import cycles among the modules of facade (facade.mesh included).

The graph is built from the source with ``ast`` (nothing is imported): an edge A -> B when A imports B
at module level, which is what runs when A is imported. Imports under ``if TYPE_CHECKING:`` are for
the type checker only and are left out. Importing ``a.b.c`` from outside package ``a.b`` also runs
``a/__init__`` and ``a/b/__init__``, so those are edges too.

Function-local (lazy) imports run later, when the function is called; they are kept in a second
graph. A lazy import that closes a cycle of the module-level graph is a cycle put off, not removed:
each one must be listed in ``LAZY_CYCLES`` with why it stays, and a listed one that no longer closes
a cycle must be taken off the list.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# facade/ and the folders installed in its namespace (facade/mesh etc. are symlinks to them).
PACKAGES = {"facade": "facade", "mesh": "facade.mesh", "sample_monolith": "facade.sample_monolith", "loadtests": "facade.loadtests"}

# (importer, imported) -> why the import stays lazy although it closes a cycle. Keep it empty.
LAZY_CYCLES: dict[tuple[str, str], str] = {}


@dataclass(frozen=True, slots=True)
class Imports:
    """The modules one module imports from facade (facade.mesh included), by when the import runs."""

    module_level: frozenset[str]
    lazy: frozenset[str]


def _module_name(path: Path, folder: str, package: str) -> str:
    parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(p, folder, package): p
        for folder, package in PACKAGES.items()
        for p in sorted((ROOT / folder).rglob("*.py"))  # (rglob does not follow facade/mesh's symlink)
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(body: list[ast.stmt], *, lazy: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement in ``body`` with whether it runs later than the module's own import."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, lazy
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.orelse, lazy=lazy)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            for child in ast.walk(node):
                if isinstance(child, ast.Import | ast.ImportFrom):
                    yield child, True
        else:
            # if/try/with/class bodies at module level run with the module: look inside them.
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    for item in inner:
                        if isinstance(item, ast.ExceptHandler):
                            yield from _import_nodes(item.body, lazy=lazy)
                        elif isinstance(item, ast.stmt):
                            yield from _import_nodes([item], lazy=lazy)


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, known: Mapping[str, Path]) -> set[str]:
    """The known modules an import statement runs (the named module and the packages above it)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = importer.split(".")
            base = base if is_package else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        names = [module]
        # ``from pkg import sub`` imports the submodule pkg.sub when there is one.
        names += [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in known]
    found: set[str] = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            # A module's own packages are already being imported when it runs: not an edge.
            if prefix in known and not (importer == prefix or importer.startswith(prefix + ".")):
                found.add(prefix)
    return found


def import_graph() -> dict[str, Imports]:
    known = _modules()
    graph: dict[str, Imports] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        module_level: set[str] = set()
        lazy: set[str] = set()
        for node, is_lazy in _import_nodes(tree.body, lazy=False):
            targets = _targets(node, name, path.name == "__init__.py", known)
            (lazy if is_lazy else module_level).update(targets - {name})
        graph[name] = Imports(frozenset(module_level), frozenset(lazy - module_level))
    return graph


def find_cycle(edges: Mapping[str, frozenset[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def reaches(edges: Mapping[str, frozenset[str]], start: str, goal: str) -> list[str] | None:
    """A path start -> ... -> goal over ``edges`` (breadth-first), or None."""
    previous: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for nxt in sorted(edges.get(node, ())):
                if nxt in previous:
                    continue
                previous[nxt] = node
                if nxt == goal:
                    chain = [nxt]
                    while (back := previous[chain[-1]]) is not None:
                        chain.append(back)
                    return chain[::-1]
                following.append(nxt)
        frontier = following
    return None


def lazy_cycles(graph: Mapping[str, Imports]) -> dict[tuple[str, str], list[str]]:
    """Lazy imports A -> B where B imports A again at module level: (A, B) -> the cycle."""
    edges = {name: imports.module_level for name, imports in graph.items()}
    found: dict[tuple[str, str], list[str]] = {}
    for name, imports in graph.items():
        for target in sorted(imports.lazy):
            back = reaches(edges, target, name)
            if back is not None:
                found[(name, target)] = [name, *back]
    return found


# -- the checker itself, on small graphs --------------------------------------------------------------


def test_find_cycle_reports_the_cycle_and_nothing_on_a_dag() -> None:
    assert find_cycle({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset()}) is None
    assert find_cycle({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"})}) == ["a", "b", "c", "a"]


def test_imports_under_type_checking_are_left_out_and_function_imports_are_lazy(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from .config import Config\n"
        "if TYPE_CHECKING:\n"
        "    from .runtime import FacadeRuntime\n"
        "try:\n"
        "    from . import proxy\n"
        "except ImportError:\n"
        "    proxy = None\n"
        "def f():\n"
        "    from .admin import build_admin_app\n"
    )
    tree = ast.parse(source)
    known = {m: Path() for m in ("facade", "facade.config", "facade.runtime", "facade.proxy", "facade.admin")}
    found = {(frozenset(_targets(node, "facade.x", False, known)), lazy) for node, lazy in _import_nodes(tree.body, lazy=False)}
    assert found == {
        (frozenset(), False),  # typing
        (frozenset({"facade.config"}), False),
        (frozenset({"facade.proxy"}), False),
        (frozenset({"facade.admin"}), True),
    }


# -- the project ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, Imports]:
    """The project's graph, parsed once for the tests below (it reads every module of both packages)."""
    return import_graph()


def test_the_graph_sees_the_modules_and_their_imports(graph: dict[str, Imports]) -> None:
    assert {"facade.runtime", "facade.proxy", "facade.mesh.controlplane", "facade.migration.controller"} <= graph.keys()
    assert "facade.config" in graph["facade.runtime"].module_level
    # From outside the package, importing a submodule runs the package's __init__ too.
    assert "facade.config" in graph["facade.mesh.controlplane"].module_level
    assert {"facade.upstream", "facade.upstream.h1"} <= graph["facade.proxy"].module_level


def test_no_import_cycles_among_module_level_imports(graph: dict[str, Imports]) -> None:
    cycle = find_cycle({name: imports.module_level for name, imports in graph.items()})
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_lazy_imports_that_put_a_cycle_off_are_listed(graph: dict[str, Imports]) -> None:
    found = lazy_cycles(graph)
    unlisted = {pair: " -> ".join(cycle) for pair, cycle in found.items() if pair not in LAZY_CYCLES}
    assert not unlisted, f"lazy imports closing a cycle (break the cycle, or list them in LAZY_CYCLES): {unlisted}"
    stale = sorted(set(LAZY_CYCLES) - set(found))
    assert not stale, f"LAZY_CYCLES lists imports that no longer close a cycle: {stale}"
