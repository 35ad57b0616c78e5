"""The queue's rows as Python sees them: a job, a node it finished, a job's summary for a
table of runs, the counts by status, and the lease owner ids of engine processes.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "JOB_COLUMNS",
    "STATUSES",
    "Counts",
    "Job",
    "JobSummary",
    "NodeRow",
    "job_from_row",
    "new_owner",
    "owner_is_dead",
]

STATUSES = ("queued", "running", "done", "failed")


def new_owner() -> str:
    """A lease owner id for this process: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` names a process on this host that no longer exists."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True, slots=True)
class Job:
    """A row of the queue."""

    id: int
    flow: str
    flow_sha: str
    input: dict[str, Any]
    status: str
    next_agent: str
    node: str | None
    attempts: int
    created: float
    started: float | None
    finished: float | None
    error: str | None

    @property
    def run_id(self) -> str:
        return f"{self.id:06d}"

    @property
    def run_name(self) -> str:
        """The run's folder name under ``runs/``."""
        return f"{self.flow}-{self.run_id}"


@dataclass(frozen=True, slots=True)
class NodeRow:
    """A node a job finished (or failed), for the per-agent counts."""

    node: str
    agent: str
    status: str
    """``done`` or ``failed``."""
    seconds: float


@dataclass(frozen=True, slots=True)
class JobSummary:
    """A job as a table of runs shows it: no input, cheap to read by the thousand."""

    id: int
    flow: str
    status: str
    next_agent: str
    """The agent the job runs now (running) or next (queued)."""
    node: str | None
    """The node that failed it, or else the last node it finished."""
    attempts: int
    created: float
    started: float | None
    finished: float | None
    error: str | None
    node_agent: str | None = None
    """The agent of ``node``."""
    flow_sha: str = ""

    @property
    def run_name(self) -> str:
        return f"{self.flow}-{self.id:06d}"

    @property
    def agent(self) -> str:
        """The agent it runs now or next (queued, running), or that it ended on."""
        if self.status in ("done", "failed") and self.node_agent:
            return self.node_agent
        return self.next_agent


@dataclass
class Counts:
    """Jobs by status, per flow and per agent (queued/running by the agent they run next;
    done/failed by the nodes each agent finished)."""

    by_flow: dict[str, dict[str, int]]
    by_agent: dict[str, dict[str, int]]

    @property
    def total(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for row in self.by_flow.values():
            for k, v in row.items():
                out[k] += v
        return out


JOB_COLUMNS = (
    "id, flow, flow_sha, input, status, next_agent, node, attempts, created, started, finished, "
    "error"
)
"""The ``jobs`` columns a :class:`Job` is read from, in the order :func:`job_from_row` reads."""


def job_from_row(row: Sequence[Any]) -> Job:
    """A :class:`Job` from a row of the :data:`JOB_COLUMNS`."""
    return Job(
        id=row[0],
        flow=row[1],
        flow_sha=row[2],
        input=json.loads(row[3]),
        status=row[4],
        next_agent=row[5],
        node=row[6],
        attempts=row[7],
        created=row[8],
        started=row[9],
        finished=row[10],
        error=row[11],
    )
