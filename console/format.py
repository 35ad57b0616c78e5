"""How the console writes figures and times: short, so six tiles fit in 80 columns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pantheon.core.store.queue import JobSummary

__all__ = ["age", "figure", "job_age", "job_note", "job_now"]


def figure(value: Any, nd: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{nd}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def age(seconds: float | None, *, short: bool = False) -> str:
    """12s, 4m05s, 3h12m, 2d04h; ``short`` drops the seconds past a minute (4m), for a
    narrow line or a figure that need not move every second."""
    if seconds is None:
        return ""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m" if short else f"{s // 60}m{s % 60:02d}s"
    if s < 86400 or short:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def job_age(job: JobSummary, now: float) -> str:
    """Running: since it started; finished: how long it ran; queued: how long it has waited."""
    if job.status == "running":
        return age(now - (job.started or job.created))
    if job.status in ("done", "failed") and job.finished:
        return age(job.finished - (job.started or job.created))
    return age(now - job.created, short=True)  # a wait: minutes are enough, and redraw less


def job_now(job: JobSummary, in_flight: Sequence[tuple[str, str]] = ()) -> str:
    """What the job does now: the nodes in flight, the agent next, or where it ended."""
    if job.status == "running":
        if not in_flight:
            return "▶ between nodes"
        nodes = ", ".join(n for n, _ in in_flight)
        agents = ", ".join(dict.fromkeys(a for _, a in in_flight))
        return f"▶ {nodes} ({agents})" if agents and agents != nodes else f"▶ {nodes}"
    if job.status == "queued":
        return f"next {job.next_agent}"
    if job.status == "failed":
        return f"✗ {job.node or job.next_agent}"
    return job.node or ""


WAIT_SHOWN_S = 10.0
"""A model call is named on its job's row once it has waited this long."""


def job_note(
    job: JobSummary,
    problem: str | None,
    waiting_since: float | None = None,
    now: float | None = None,
) -> str:
    if problem:
        return problem
    if job.status == "running" and waiting_since is not None and now is not None:
        waited = now - waiting_since
        if waited >= WAIT_SHOWN_S:
            return f"waiting on the model {age(waited)}"
    if job.error:
        return job.error.splitlines()[0] if job.error.strip() else ""
    if job.attempts > 1:
        return f"attempt {job.attempts}"
    return ""
