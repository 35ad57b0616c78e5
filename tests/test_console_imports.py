"""The console's modules import one another one way: no cycle, however an import is written.

Every ``import`` and ``from ... import`` in a module counts, wherever it stands: at the top, in a
function, under ``if TYPE_CHECKING:``. A cycle hidden in a function or a type hint still ties the
modules together; the screens reach the app through a Protocol instead.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import pantheon.console

PACKAGE = "pantheon.console"
ROOT = Path(pantheon.console.__path__[0])


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Each module under ``root`` by its dotted name (a package by its ``__init__.py``)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join([package, *parts])] = path
    return names


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    """Every dotted name the module imports, relative imports resolved; for
    ``from X import Y`` both ``X`` and ``X.Y`` (``Y`` may be a module)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                base = here[: len(here) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            yield source
            yield from (f"{source}.{alias.name}" for alias in node.names)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        targets = set()
        for imported in imported_names(tree, name, is_package):
            # the longest prefix that is one of ours: `a.b.c` where c is a class is module `a.b`
            parts = imported.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                targets.add(".".join(parts))
        graph[name] = targets
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle of the graph as the path that walks it (first node repeated at the end), or
    ``None`` when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for succ in sorted(graph.get(node, ())):
            if state.get(succ) == 1:
                return [*path[path.index(succ) :], succ]
            if succ not in state and (cycle := visit(succ)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def reaches(graph: Mapping[str, Iterable[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def test_the_cycle_finder_finds_a_cycle_and_names_it():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"a"}, "a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_the_graph_counts_imports_in_functions_and_type_checking_blocks(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "app.py").write_text("from .sub.screen import Screen\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "screen.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from ..app import App\n"
        "def later():\n"
        "    from . import other\n"
        "    import pkg.sub.other\n"
    )
    (pkg / "sub" / "other.py").write_text("from pkg import sub\n")
    graph = import_graph(pkg, "pkg")
    assert graph == {
        "pkg": set(),
        "pkg.app": {"pkg.sub.screen"},
        "pkg.sub": set(),
        "pkg.sub.screen": {"pkg.app", "pkg.sub", "pkg.sub.other"},
        "pkg.sub.other": {"pkg", "pkg.sub"},
    }
    assert find_cycle(graph) == ["pkg.app", "pkg.sub.screen", "pkg.app"]


def test_the_console_has_no_import_cycle():
    graph = import_graph(ROOT, PACKAGE)
    assert {"pantheon.console.app", "pantheon.console.screens.base"} <= graph.keys()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    "module",
    [
        "pantheon.console.messages",
        "pantheon.console.palette",
        *sorted(m for m in module_names(ROOT, PACKAGE) if m.startswith(f"{PACKAGE}.screens")),
    ],
)
def test_the_screens_and_the_palette_never_reach_the_app(module):
    assert not reaches(import_graph(ROOT, PACKAGE), module, "pantheon.console.app")


def test_the_app_has_what_the_screens_use_of_it(tmp_path):
    from pantheon.console.app import PantheonConsole
    from pantheon.console.messages import ConsoleApp

    app = PantheonConsole(tmp_path, watch=False)
    wanted = set(ConsoleApp.__annotations__) | {
        name for name, value in vars(ConsoleApp).items() if callable(value) and name[0] != "_"
    }
    assert {"artifacts", "snapshot", "follow_run", "action_help"} <= wanted
    assert [name for name in sorted(wanted) if not hasattr(app, name)] == []
