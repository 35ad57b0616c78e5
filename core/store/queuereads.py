"""What the console, the metrics and the report read from a queue, written once for both of
them: the SQLite file and the PostgreSQL database. Each names its tables and its parameter
mark; the statements are the same."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pantheon.core.errors import QueueError
from pantheon.core.store.jobs import JOB_COLUMNS, STATUSES, Counts, Job, job_from_row

__all__ = ["QueueReads"]


class QueueReads:
    """The reads of a queue (the base of both kinds)."""

    TABLES: ClassVar[dict[str, str]] = {
        "jobs": "jobs",
        "nodes": "nodes",
        "reviews": "reviews",
        "kv": "kv",
        "flows": "flows",
    }
    """The tables' names in this kind of queue."""
    MARK = "?"
    """The parameter mark of its driver."""
    path: Any
    _read: Callable[..., list[Any]]

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self._read(sql.format(**self.TABLES).replace("?", self.MARK), args)

    def flow_text(self, sha256: str) -> tuple[str, str]:
        """The (source, text) of a stored flow."""
        rows = self._rows("SELECT source, text FROM {flows} WHERE sha256 = ?", (sha256,))
        if not rows:
            raise QueueError(f"flow {sha256[:12]} is not in {self.path}")
        return rows[0][0], rows[0][1]

    def get_value(self, key: str) -> str | None:
        """The value kept under ``key``, or None."""
        rows = self._rows("SELECT value FROM {kv} WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def get(self, job_id: int) -> Job:
        rows = self._rows(f"SELECT {JOB_COLUMNS} FROM {{jobs}} WHERE id = ?", (job_id,))
        if not rows:
            raise QueueError(f"no job {job_id} in {self.path}")
        return job_from_row(rows[0])

    def jobs(self, *, status: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        where, args = ("", (limit, offset)) if status is None else (
            "WHERE status = ? ", (status, limit, offset)
        )  # fmt: skip
        rows = self._rows(
            f"SELECT {JOB_COLUMNS} FROM {{jobs}} {where}ORDER BY id LIMIT ? OFFSET ?", args
        )
        return [job_from_row(r) for r in rows]

    def node_rows(self) -> list[tuple[int, str, str, str, float]]:
        """Every finished node: (job id, node, agent, status, seconds)."""
        return [
            tuple(r) for r in self._rows("SELECT job_id, node, agent, status, seconds FROM {nodes}")
        ]

    def node_agents(self, job_id: int) -> dict[str, tuple[str, str, float]]:
        """The nodes a job finished: node id -> (agent, status, seconds)."""
        return {
            node: (agent, status, seconds)
            for node, agent, status, seconds in self._rows(
                "SELECT node, agent, status, seconds FROM {nodes} WHERE job_id = ?", (job_id,)
            )
        }

    def counts(self) -> Counts:
        by_flow: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATUSES, 0))
        for flow, status, n in self._rows(
            "SELECT flow, status, COUNT(*) FROM {jobs} GROUP BY flow, status"
        ):
            by_flow[flow][status] = n
        by_agent: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATUSES, 0))
        for agent, status, n in self._rows(
            "SELECT next_agent, status, COUNT(*) FROM {jobs} "
            "WHERE status IN ('queued', 'running') GROUP BY next_agent, status"
        ):
            by_agent[agent][status] = n
        for agent, status, n in self._rows(
            "SELECT agent, status, COUNT(*) FROM {nodes} GROUP BY agent, status"
        ):
            by_agent[agent][status] = n
        return Counts(dict(by_flow), dict(by_agent))

    def window(self, since: float) -> dict[str, Any]:
        """What happened since ``since`` (epoch seconds): arrivals, finished jobs and their mean
        service time, and per agent the nodes finished, their mean seconds and pass rate."""
        arrivals, first, last = self._rows(
            "SELECT COUNT(*), MIN(created), MAX(created) FROM {jobs} WHERE created >= ?", (since,)
        )[0]
        finished, service = self._rows(
            "SELECT COUNT(*), AVG(finished - started) FROM {jobs} "
            "WHERE finished >= ? AND started IS NOT NULL",
            (since,),
        )[0]
        agents = {
            agent: {"nodes": n, "mean_s": mean, "passed": ok}
            for agent, n, mean, ok in self._rows(
                "SELECT agent, COUNT(*), AVG(seconds), COUNT(*) FILTER (WHERE status = 'done') "
                "FROM {nodes} WHERE finished >= ? GROUP BY agent",
                (since,),
            )
        }
        return {
            "arrivals": arrivals,
            "first_arrival": first,
            "last_arrival": last,
            "finished": finished,
            "service_s": service,
            "agents": agents,
        }

    def review_pairs(self, last: int) -> list[tuple[bool, bool]]:
        """The verdicts of the two reviewers on the ``last`` most recent reviewed changes."""
        rows = self._rows(
            "SELECT first, second FROM {reviews} ORDER BY at DESC, job_id DESC LIMIT ?", (last,)
        )
        return [(bool(a), bool(b)) for a, b in rows]

    def pending(self) -> int:
        """Jobs queued or running (by any engine)."""
        return self._rows("SELECT COUNT(*) FROM {jobs} WHERE status IN ('queued', 'running')")[0][0]
