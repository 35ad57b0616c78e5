"""One night at a time on an artifacts directory, found and stopped through its lock.

A night (and a headless engine, unless it joins on purpose) holds ``ARTIFACTS/night.lock``
for as long as it runs: an exclusive ``flock`` that the kernel lets go when the process ends,
however it ends, and the holder's pid, host and start written inside. A second night on the
same directory is refused with the first one's pid; ``pantheon stop`` reads the pid and sends
it SIGTERM — the nodes in flight finish, then the servers stop — and a second stop cancels
them (the engine's own graceful-then-hard stop).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pantheon.core.errors import PantheonError

__all__ = [
    "NIGHT_LOCK",
    "NightHolder",
    "NightLock",
    "NightRunning",
    "night_holder",
    "stop_night",
]

NIGHT_LOCK = "night.lock"


@dataclass(frozen=True)
class NightHolder:
    pid: int
    host: str
    started: str
    what: str
    """``night`` or ``engine``."""

    def line(self) -> str:
        at = self.started[11:16] if len(self.started) >= 16 else self.started
        return f"{self.what} pid {self.pid} on {self.host}, started {at} UTC"


class NightRunning(PantheonError):
    """A night already drains this artifacts directory."""

    title = "A night is running"

    def __init__(self, artifacts: Path, holder: NightHolder | None) -> None:
        who = holder.line() if holder else "its pid could not be read"
        super().__init__(
            f"a night already drains {artifacts} ({who})",
            hint="`pantheon stop` stops it; `pantheon console` watches it; "
            "`pantheon engine --join` adds an engine to it on purpose",
        )
        self.holder = holder


def _read(path: Path) -> NightHolder | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return NightHolder(int(data["pid"]), str(data["host"]), str(data["started"]), data["what"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class NightLock:
    """Held while a night runs (a context manager); NightRunning when another holds it."""

    def __init__(self, artifacts: Path, what: str = "night") -> None:
        self.artifacts = Path(artifacts)
        self.path = self.artifacts / NIGHT_LOCK
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NightRunning(self.artifacts, _wait_read(self.path)) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "what": self.what,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing lets the flock go
            self._fd = None

    def __enter__(self) -> NightLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _wait_read(path: Path) -> NightHolder | None:
    """The holder, read again for a moment: it writes its pid just after it locks."""
    for _ in range(20):
        holder = _read(path)
        if holder is not None:
            return holder
        time.sleep(0.05)
    return None


def night_holder(artifacts: Path) -> NightHolder | None:
    """The night that holds ``artifacts`` now, or None when none runs."""
    path = Path(artifacts) / NIGHT_LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _wait_read(path) or NightHolder(0, "?", "?", "night")
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def stop_night(artifacts: Path, *, hard: bool = False) -> NightHolder | None:
    """Ask the night that holds ``artifacts`` to stop (SIGTERM: its nodes in flight finish;
    ``hard``: a second SIGTERM, which cancels them). The holder, or None when none runs."""
    holder = night_holder(artifacts)
    if holder is None or holder.pid <= 0:
        return holder
    if holder.host != socket.gethostname():
        raise PantheonError(
            f"the night on {artifacts} runs on {holder.host}, not here: stop it there"
        )
    try:
        os.kill(holder.pid, signal.SIGTERM)
        if hard:
            time.sleep(0.5)
            os.kill(holder.pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    return holder
