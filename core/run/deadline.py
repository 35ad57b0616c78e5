"""A night that must be done by a time (``--until 07:00``): no job starts that the service time
measured so far says cannot finish by then. Jobs running at the deadline finish; the jobs left
stay queued for the next night, and the night says how many and why."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pantheon.core.errors import ConfigError

__all__ = ["Deadline", "parse_until"]

_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_until(text: str, now: datetime | None = None) -> datetime:
    """``HH:MM`` (the next such time, today or tomorrow) or an ISO date and time, as a local
    time; ConfigError otherwise."""
    now = now or datetime.now().astimezone()
    match = _HHMM.match(text.strip())
    if match:
        at = now.replace(hour=int(match[1]), minute=int(match[2]), second=0, microsecond=0)
        return at if at > now else at + timedelta(days=1)
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--until {text!r} is not a time",
            hint="give HH:MM (the next one: 07:00 is tomorrow morning after 07:00) or "
            "an ISO date and time (2026-12-08T07:00)",
        ) from None
    at = at if at.tzinfo else at.astimezone()
    if at <= now:
        raise ConfigError(f"--until {text!r} is already past")
    return at


@dataclass
class Deadline:
    at: datetime
    """When the night must be done (an aware local time)."""
    durations: list[float] = field(default_factory=list)
    """How long each job this engine finished took, in seconds."""
    _started: dict[int, float] = field(default_factory=dict)

    def started(self, job_id: int) -> None:
        self._started[job_id] = time.monotonic()

    def finished(self, job_id: int) -> None:
        began = self._started.pop(job_id, None)
        if began is not None:
            self.durations.append(time.monotonic() - began)

    @property
    def service_s(self) -> float | None:
        """The mean time a job took, once one finished."""
        return sum(self.durations) / len(self.durations) if self.durations else None

    def left_s(self, now: datetime | None = None) -> float:
        return (self.at - (now or datetime.now().astimezone())).total_seconds()

    def allows(self, now: datetime | None = None) -> bool:
        """Whether a job started now can finish in time, by what was measured (before any job
        finished: whether there is time left at all)."""
        left = self.left_s(now)
        service = self.service_s
        return left > 0 and (service is None or service <= left)

    def why(self, left_jobs: int) -> str:
        service = self.service_s
        took = f"; a job takes {service:.0f} s" if service is not None else ""
        return (
            f"the night must be done by {self.at:%H:%M} (--until): {left_jobs} job(s) left "
            f"in the queue, none could finish in time{took}"
        )
