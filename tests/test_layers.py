"""The engine runs headless: the core, the trainer and the engine's command never load Textual;
and the tests' own layers: a test file imports helpers, never another test file nor conftest."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pantheon.core


def test_headless_modules_import_without_textual():
    mods = [m.name for m in pkgutil.walk_packages(pantheon.core.__path__, "pantheon.core.")]
    mods += ["pantheon.trainer", "pantheon.console.cli"]
    code = (
        "import importlib, sys\n"
        f"for name in {mods!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'textual' in sys.modules:\n"
        "        sys.exit(f'{name} pulls in textual')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(mods) > 8


def test_importing_one_small_module_loads_nothing_else():
    """``pantheon.core`` is a lazy face: its errors load neither the HTTP client nor SQLite."""
    code = (
        "import sys, pantheon.core.errors\n"
        "heavy = [m for m in ('httpx', 'sqlite3', 'pantheon.core.run.engine')\n"
        "         if m in sys.modules]\n"
        "sys.exit(', '.join(heavy) or None)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"import pantheon.core.errors loads {done.stderr.strip()}"
    from pantheon.core import Engine  # the face still names everything it did

    assert Engine.__module__ == "pantheon.core.run.engine"


TESTS = Path(__file__).parent
# Files edited elsewhere when the helpers moved to helpers.py: they still import conftest's
# re-exports (conftest.py names them). An entry here goes once its file imports helpers.
NOT_YET: set[tuple[str, str]] = set()


def imported_test_modules(source: str) -> list[str]:
    """The test files (``test_*``) and ``conftest`` a tests/ file's source imports, wherever in
    the file (code in its strings is not read)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            name = parts[1] if parts[0] == "tests" and len(parts) > 1 else parts[0]
            if name == "conftest" or name.startswith("test_"):
                found.append(module)
    return found


def test_no_test_file_imports_another_test_file_or_conftest():
    """Shared helpers live in helpers modules (helpers.py, helpers_training.py, night_fixture.py),
    fixtures in conftest.py: a test file that imports another runs that file's module twice
    and ties the two files' tests together."""
    sample = (
        "import json\nfrom helpers import git\nfrom test_codefix import scripted\n"
        "def f():\n    from conftest import pantheon\n    import tests.test_learn\n"
        "CODE = 'from test_x import y'\n"
    )
    assert imported_test_modules(sample) == ["test_codefix", "conftest", "tests.test_learn"]
    files = sorted(TESTS.glob("*.py"))
    assert len(files) > 50
    wrong = [
        f"{path.name} imports {module}"
        for path in files
        for module in imported_test_modules(path.read_text(encoding="utf-8"))
        if (path.name, module) not in NOT_YET
    ]
    assert not wrong, "import the helpers from a helpers module instead: " + "; ".join(wrong)
