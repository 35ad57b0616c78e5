"""Logging a trouble that repeats: one line when it starts, then one line a window with a count.

A night that cannot write a metrics sample every 2 s would otherwise log the same warning 1,800
times an hour. ``RepeatLog`` logs the first occurrence of each key at once, counts the ones that
follow within ``window_s``, and logs the next one after the window with the count of those it held
back ("… (repeated 37 times in the last 60 s)"). ``done(key)`` says how many were held back when
the trouble is over, so that no occurrence goes uncounted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RepeatLog"]


@dataclass
class _Seen:
    start: float
    """When the current window began (the clock's time)."""
    held: int = 0
    """Occurrences within the window that were not logged."""
    level: int = logging.WARNING
    msg: str = ""
    args: tuple[object, ...] = ()


class RepeatLog:
    """Logs each key's first occurrence, then at most one line per window, with a count."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[str, _Seen] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` now, or count it when ``key`` was logged within the window.
        Returns whether a line was written."""
        now = self.clock()
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = _Seen(now, 0, level, msg, args)
            self.logger.log(level, msg, *args)
            return True
        if now - seen.start < self.window_s:
            seen.held += 1
            seen.level, seen.msg, seen.args = level, msg, args
            return False
        held, span = seen.held, now - seen.start
        self._seen[key] = _Seen(now, 0, level, msg, args)
        if held:
            self.logger.log(level, msg + "%s", *args, _repeated(held, span))
        else:
            self.logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.ERROR, key, msg, *args)

    def done(self, key: str) -> None:
        """The trouble named ``key`` is over: log the count of what was held back, if any, and
        forget it (its next occurrence is logged at once)."""
        seen = self._seen.pop(key, None)
        if seen is not None and seen.held:
            self.logger.log(
                seen.level,
                seen.msg + "%s",
                *seen.args,
                _repeated(seen.held, self.clock() - seen.start),
            )

    def forget(self, key: str) -> None:
        """Drop ``key`` without a line: its next occurrence is logged at once."""
        self._seen.pop(key, None)

    def flush(self) -> None:
        """Log the counts held back for every key (at a shutdown, say)."""
        for key in list(self._seen):
            self.done(key)

    def active(self, key: str) -> bool:
        """Whether ``key`` was logged and not yet ``done``."""
        return key in self._seen


def _repeated(held: int, span_s: float) -> str:
    times = "once" if held == 1 else f"{held} times"
    return f" (repeated {times} in the last {max(span_s, 1):.0f} s)"
