"""``pantheon console``: the operator console over the artifacts directory."""

from __future__ import annotations

import argparse
from typing import Any

from pantheon.console.commands.common import artifacts_arg, quiet_logging_for_textual


def add_console(sub: Any) -> None:
    p = sub.add_parser(
        "console",
        help="the operator console: watch and steer the night (keyboard, works over SSH)",
        description="The operator console over the artifacts directory. It only reads the "
        "night and writes control.json, so it can be closed and opened again at any time "
        "without touching the engine. Press ? inside for the keys.",
    )
    artifacts_arg(p)


def cmd_console(args: argparse.Namespace) -> int:
    from pantheon.console.app import PantheonConsole

    quiet_logging_for_textual()
    PantheonConsole(args.artifacts).run()
    return 0
