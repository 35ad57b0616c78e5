"""The house rules every module keeps: no module over 500 lines, and no private name of one
module used from another (what another file needs is public, and named so)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "console", "widgets", "trainer", "flows")
"""The folders of the ``pantheon.*`` packages (``pantheon.core`` is ``core/``, ...)."""
CHECKED = (*PACKAGES, "bench", "tests")
MAX_LINES = 500


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_module(dotted: str) -> bool:
    """Whether ``pantheon.<package>.<...>`` is a module or package of this tree."""
    parts = dotted.split(".")
    if parts[0] != "pantheon":
        return False
    if len(parts) == 1:
        return True
    if parts[1] not in PACKAGES:
        return False
    path = ROOT.joinpath(*parts[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _package_of(path: Path) -> str | None:
    """The dotted package a source file is in (None outside the ``pantheon.*`` packages)."""
    rel = path.relative_to(ROOT)
    if rel.parts[0] not in PACKAGES:
        return None
    return ".".join(("pantheon", *rel.parts[:-1]))


def _imported_from(node: ast.ImportFrom, path: Path) -> str | None:
    """The absolute module an import takes names from, when it is one of pantheon's."""
    if not node.level:
        module = node.module or ""
        return module if module.split(".")[0] == "pantheon" else None
    package = _package_of(path)
    if package is None:
        return None  # a test's own helpers
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _dotted(node: ast.expr) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def private_uses(path: Path, source: str | None = None) -> list[str]:
    """``file:line: name`` for each private name of another pantheon module the file (or
    ``source``, as that file) uses: imported from it, read as an attribute of it, patched on it,
    or named in a patch target."""
    text = path.read_text() if source is None else source
    tree = ast.parse(text, filename=str(path))
    modules: dict[str, str] = {}  # local name -> the pantheon module it is bound to
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pantheon":
                    if alias.asname:
                        modules[alias.asname] = alias.name
                    else:
                        modules["pantheon"] = "pantheon"
        elif isinstance(node, ast.ImportFrom):
            source = _imported_from(node, path)
            if source is None:
                continue
            for alias in node.names:
                if _private(alias.name):
                    found.append((node.lineno, f"{source}.{alias.name}"))
                elif _is_module(f"{source}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{source}.{alias.name}"

    def module_of(expr: ast.expr) -> str | None:
        dotted = _dotted(expr)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        if head not in modules:
            return None
        full = ".".join(p for p in (modules[head], rest) if p)
        return full if _is_module(full) else None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            module = module_of(node.value)
            if module is not None:
                found.append((node.lineno, f"{module}.{node.attr}"))
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            attr = node.args[1]
            if (
                name in ("setattr", "delattr", "object")
                and isinstance(attr, ast.Constant)
                and isinstance(attr.value, str)
                and _private(attr.value)
                and (module := module_of(node.args[0])) is not None
            ):
                found.append((node.lineno, f"{module}.{attr.value}"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            head, _, last = node.value.rpartition(".")
            if _private(last) and last.isidentifier() and _is_module(head):
                found.append((node.lineno, node.value))
    rel = path.relative_to(ROOT)
    return [f"{rel}:{line}: {name}" for line, name in sorted(set(found))]


def test_no_private_name_is_used_from_another_file():
    uses = [use for path in _sources(*CHECKED) for use in private_uses(path)]
    assert uses == [], "private names used from another file:\n" + "\n".join(uses)


def test_the_check_sees_each_way_of_reaching_a_private_name():
    text = (
        "from pantheon.core.model.procs import _hidden, free_port\n"
        "from pantheon.core.model import procs\n"
        "import pantheon.core.model.server as server\n"
        "import pantheon.core.store.jobs\n"
        "procs._launcher\n"
        "server.free_port, free_port._not_a_module\n"
        "pantheon.core.store.jobs._secret\n"
        "monkeypatch.setattr(procs, '_port_lock', None)\n"
        "patch('pantheon.core.store.queue._old')\n"
        "patch('pantheon.core.store.queue.__name__')\n"
        "from .helpers import _own_helper\n"
    )
    assert private_uses(ROOT / "tests" / "test_house.py", text) == [
        "tests/test_house.py:1: pantheon.core.model.procs._hidden",
        "tests/test_house.py:5: pantheon.core.model.procs._launcher",
        "tests/test_house.py:7: pantheon.core.store.jobs._secret",
        "tests/test_house.py:8: pantheon.core.model.procs._port_lock",
        "tests/test_house.py:9: pantheon.core.store.queue._old",
    ]


def test_no_module_is_over_500_lines():
    long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for path in _sources(*PACKAGES)
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert long == [], f"modules over {MAX_LINES} lines:\n" + "\n".join(long)
