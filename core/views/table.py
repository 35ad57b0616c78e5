"""The table of runs: the order it shows the jobs in (kept up to date one job at a time),
the filter typed above it, and the jobs that pass.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pantheon.core.store.queue import JobSummary

__all__ = ["RunFilter", "RunOrder", "table_jobs"]


class RunOrder:
    """The jobs in the order a table shows them, kept up to date one job at a time.

    Running first (longest running on top), then finished ones (latest first), then the queue
    in the order it drains (by id). Each change is a bisect into a sorted list, so a night of
    10 000 jobs is never sorted again after it was read.
    """

    def __init__(self) -> None:
        self._running: list[tuple[float, int]] = []
        self._finished: list[tuple[float, int]] = []
        self._queued: list[int] = []
        self._where: dict[int, tuple[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._where)

    def update(self, job: JobSummary) -> None:
        self.discard(job.id)
        if job.status == "running":
            item: Any = (job.started or job.created, job.id)
            bisect.insort(self._running, item)
            self._where[job.id] = ("running", item)
        elif job.status in ("done", "failed"):
            item = (-(job.finished or 0.0), job.id)
            bisect.insort(self._finished, item)
            self._where[job.id] = ("finished", item)
        else:
            bisect.insort(self._queued, job.id)
            self._where[job.id] = ("queued", job.id)

    def discard(self, job_id: int) -> None:
        old = self._where.pop(job_id, None)
        if old is None:
            return
        bucket = {"running": self._running, "finished": self._finished, "queued": self._queued}
        items: list[Any] = bucket[old[0]]
        i = bisect.bisect_left(items, old[1])
        if i < len(items) and items[i] == old[1]:
            del items[i]

    def __iter__(self) -> Iterator[int]:
        for _, job_id in self._running:
            yield job_id
        for _, job_id in self._finished:
            yield job_id
        yield from self._queued


@dataclass(frozen=True)
class RunFilter:
    """Which runs a table shows: ``status:failed flow:docops agent:codegen`` and free words."""

    status: str | None = None
    flow: str | None = None
    agent: str | None = None
    words: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> RunFilter:
        fields: dict[str, str] = {}
        words = []
        for token in text.split():
            key, sep, value = token.partition(":")
            if sep and key.lower() in ("status", "flow", "agent") and value:
                fields[key.lower()] = value.lower()
            else:
                words.append(token.lower())
        return cls(**fields, words=tuple(words))

    def __str__(self) -> str:
        parts = [f"{k}:{v}" for k in ("status", "flow", "agent") if (v := getattr(self, k))]
        return " ".join(parts + list(self.words))

    def with_status(self, status: str | None) -> RunFilter:
        return RunFilter(status, self.flow, self.agent, self.words)

    def matches(
        self, job: JobSummary, problem: str | None = None, now: Sequence[tuple[str, str]] = ()
    ) -> bool:
        """Whether the job passes; ``now`` is the (node, agent) pairs it runs at present."""
        agents = " ".join(a for _, a in now) if now else job.agent
        if self.status and not (
            job.status.startswith(self.status) or (self.status == "unreadable" and problem)
        ):
            return False
        if self.flow and self.flow not in job.flow.lower():
            return False
        if self.agent and self.agent not in agents.lower():
            return False
        if self.words:
            hay = " ".join(
                (
                    job.run_name,
                    job.status,
                    job.next_agent,
                    job.node or "",
                    job.error or "",
                    problem or "",
                )
            ).lower()
            return all(w in hay for w in self.words)
        return True


def table_jobs(
    jobs: Mapping[int, JobSummary],
    problems: Mapping[str, str],
    flt: RunFilter,
    *,
    order: Iterable[int] | None = None,
    in_flight: Mapping[int, Sequence[tuple[str, str]]] | None = None,
    limit: int = 500,
) -> tuple[list[JobSummary], int | None]:
    """The first ``limit`` jobs that pass the filter, in table order, and how many pass in all
    (None when there are more than ``limit`` and counting them would mean reading them all).

    Running first (longest running on top), then finished ones (latest first), then the queue
    in the order it drains; ``order`` is that order when the caller keeps it (:class:`RunOrder`).
    """
    in_flight = in_flight or {}
    if order is None:
        tmp = RunOrder()
        for job in jobs.values():
            tmp.update(job)
        order = tmp
    plain = flt == RunFilter()
    shown: list[JobSummary] = []
    for job_id in order:
        job = jobs.get(job_id)
        if job is None:
            continue
        if plain or flt.matches(job, problems.get(job.run_name), in_flight.get(job_id, ())):
            if len(shown) == limit:
                return shown, (len(jobs) if plain else None)
            shown.append(job)
    return shown, len(shown)
