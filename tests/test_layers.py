"""The engine runs headless: the core, the trainer and the engine's command never load Textual."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pantheon.core


def test_headless_modules_import_without_textual():
    mods = [f"pantheon.core.{m.name}" for m in pkgutil.iter_modules(pantheon.core.__path__)]
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
