"""One night at a time on an artifacts directory, found and stopped through its lock.

A night (and a headless engine, unless it joins on purpose) holds ``ARTIFACTS/night.lock``
for as long as it runs: an exclusive ``flock`` that the kernel lets go when the process ends,
however it ends, and the holder's pid, host and start written inside. A second night on the
same directory is refused with the first one's pid; ``pantheon stop`` reads the pid and sends
it SIGTERM — the nodes in flight finish, then the servers stop — and a second stop cancels
them (the engine's own graceful-then-hard stop).

A night that serves its models on this host's CPU also holds the host's CPU lock
(:func:`host_cpu`, in the temporary folder): two such nights at once would each start their
servers on the same cores and starve each other, so a second one waits, saying for whom,
until the first ends (``--share-cpu`` runs both at once anyway).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pantheon.core.errors import PantheonError

__all__ = [
    "CPU_LOCK",
    "NIGHT_LOCK",
    "NightHolder",
    "NightLock",
    "NightRunning",
    "cpu_lock_path",
    "host_cpu",
    "night_holder",
    "stop_night",
]

NIGHT_LOCK = "night.lock"
CPU_LOCK = "pantheon-cpu.lock"


@dataclass(frozen=True)
class NightHolder:
    pid: int
    host: str
    started: str
    what: str
    """``night`` or ``engine``."""
    artifacts: str = ""

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
        return NightHolder(
            int(data["pid"]),
            str(data["host"]),
            str(data["started"]),
            str(data["what"]),
            str(data.get("artifacts", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


class NightLock:
    """Held while a night runs (a context manager); NightRunning when another holds it."""

    def __init__(self, artifacts: Path, what: str = "night", path: Path | None = None) -> None:
        self.artifacts = Path(artifacts)
        self.path = path or self.artifacts / NIGHT_LOCK
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
            "artifacts": str(self.artifacts.resolve()),
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


def cpu_lock_path() -> Path:
    """The one lock of this host's CPU for the nights that serve models on it."""
    return Path(os.environ.get("PANTHEON_CPU_LOCK") or Path(tempfile.gettempdir()) / CPU_LOCK)


@contextlib.contextmanager
def host_cpu(
    artifacts: Path,
    *,
    on_wait: Callable[[NightHolder | None], None],
    every_s: float = 2.0,
    what: str = "night",
):
    """Hold this host's CPU for a night's embedded model servers: a second night on the host
    waits (``on_wait`` says for whom, once) until the first ends, instead of both thrashing
    the same cores with their servers."""
    lock = NightLock(artifacts, what, path=cpu_lock_path())
    said = False
    while True:
        try:
            lock.acquire()
            break
        except NightRunning as exc:
            if not said:
                on_wait(exc.holder)
                said = True
            time.sleep(every_s)
    try:
        yield
    finally:
        lock.release()


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
