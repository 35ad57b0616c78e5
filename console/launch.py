"""Processes the console starts in the background: they outlive it."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

__all__ = ["launch_training"]


def launch_training(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own with its output in ``log``: it outlives the
    console. A thread waits for it, so that it leaves no zombie behind while the console runs."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    threading.Thread(target=proc.wait, name=f"wait-{proc.pid}", daemon=True).start()
    return proc
