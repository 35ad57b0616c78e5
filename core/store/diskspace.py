"""A full disk pauses the night, once and loudly, and the night goes on by itself when it has room.

``DiskGuard`` watches the file system of the artifacts directory: it pauses when a write failed
for want of space (``ENOSPC`` or ``EDQUOT`` from a file, ``SQLITE_FULL`` from the queue) or when
the free space falls under a small threshold, and it resumes when the free space is back over it
and a probe file can be written. It logs one ERROR line when it pauses and one INFO line when it
resumes; nothing in between.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pantheon.core.errors import ArtifactError, QueueError
from pantheon.core.ratelog import RepeatLog

__all__ = [
    "DEFAULT_MIN_FREE_BYTES",
    "DiskGuard",
    "DiskPause",
    "free_bytes",
    "human_bytes",
    "is_disk_full",
]

log = logging.getLogger(__name__)

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_NO_ROOM = frozenset({"SQLITE_FULL", "SQLITE_IOERR_SHMSIZE"})
"""The database cannot grow, or its shared-memory file cannot be made (a WAL database opened on
a full disk)."""
_FULL_TEXTS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT), "database or disk is full")
DEFAULT_MIN_FREE_BYTES = 64 * 2**20
"""Under this much free space the night pauses (a night writes a few MiB an hour)."""
PROBE_FILE = ".disk-probe"
PROBE_BYTES = 64 * 1024


def is_disk_full(problem: BaseException | str | None) -> bool:
    """Whether an error (or its causes), or an error's text, says the disk has no room."""
    if problem is None:
        return False
    if isinstance(problem, str):
        return any(text in problem for text in _FULL_TEXTS)
    seen: set[int] = set()
    exc: BaseException | None = problem
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.Error) and (
            getattr(exc, "sqlite_errorname", None) in _SQLITE_NO_ROOM
            or "database or disk is full" in str(exc)
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(folder: Path) -> int | None:
    """The bytes an unprivileged writer may still use on the file system of ``folder`` (or of
    the nearest folder above it that exists); None when it cannot be asked."""
    folder = Path(folder)
    for where in (folder, *folder.parents):
        try:
            st = os.statvfs(where)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        return st.f_bavail * st.f_frsize
    return None


def human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class DiskPause:
    """Why and since when the night is paused on a full disk."""

    why: str
    since: float
    """The guard's clock (monotonic) when it paused."""
    free: int | None
    """The free bytes when it paused."""


class DiskGuard:
    """Pauses the night on a full disk and resumes it when there is room again."""

    def __init__(
        self,
        folder: Path,
        *,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        check_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.folder = Path(folder)
        self.min_free_bytes = min_free_bytes
        """Under this many free bytes the night pauses, and over it again it goes on."""
        self.check_every_s = check_every_s
        self.clock = clock
        self.paused: DiskPause | None = None
        self.pauses = 0
        """How many times the night paused on this disk."""
        self._checked = -1e18
        self._repeats = RepeatLog(log, clock=clock)
        """A disk that fills and frees again and again is told once a minute, with a count."""

    def paused_for(self) -> float:
        """Seconds since the pause began (0 when not paused)."""
        return self.clock() - self.paused.since if self.paused else 0.0

    def trouble(self, problem: BaseException | str | None) -> bool:
        """Pause when ``problem`` says the disk is full — or is a storage error while the disk
        is nearly full; True when so (paused already or now): the caller says nothing more."""
        if not is_disk_full(problem) and not (
            isinstance(problem, (QueueError, ArtifactError)) and self._low()
        ):
            return False
        if self.paused is None:
            text = str(problem)
            self._pause(text.splitlines()[0] if text else "no space left on the device")
        return True

    def check(self) -> bool:
        """Look at the free space, at most every ``check_every_s``: pause when it is under the
        threshold, resume when there is room again. Returns whether the night is paused."""
        now = self.clock()
        if now - self._checked < self.check_every_s:
            return self.paused is not None
        self._checked = now
        free = free_bytes(self.folder)
        if free is None:
            return self.paused is not None
        if self.paused is None:
            if free < self.min_free_bytes:
                self._pause(f"under the {human_bytes(self.min_free_bytes)} the night keeps free")
        elif free >= self.min_free_bytes and self._probe():
            self._repeats.log(
                logging.INFO,
                "resumed",
                "the disk of %s has room again after %.0f s (%s free); the night goes on",
                self.folder,
                now - self.paused.since,
                human_bytes(free),
            )
            self.paused = None
        return self.paused is not None

    def _pause(self, why: str) -> None:
        free = free_bytes(self.folder)
        self.paused = DiskPause(why=why, since=self.clock(), free=free)
        self.pauses += 1
        self._checked = self.clock()
        self._repeats.error(
            "paused",
            "the night is paused on a full disk: %s has %s free (%s). No new jobs start, and "
            "the running ones stop after their node in flight, their data kept; the night goes "
            "on by itself when %s are free (checked every %g s)",
            self.folder,
            human_bytes(free),
            why,
            human_bytes(self.min_free_bytes),
            self.check_every_s,
        )

    def _low(self) -> bool:
        free = free_bytes(self.folder)
        return free is not None and free < self.min_free_bytes

    def _probe(self) -> bool:
        """Whether a small file can be written and flushed here (quotas and inodes run out
        too, where the free bytes do not show it)."""
        path = self.folder / PROBE_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(bytes(PROBE_BYTES))
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        except OSError:
            return False
        finally:
            path.unlink(missing_ok=True)
