"""The engine runs headless: the core, the trainer and the engine's command never load Textual."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

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
