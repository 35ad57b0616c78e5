"""The durable job queue: SQLite in WAL mode at ``artifacts/pantheon.db``.

A job is one run of a flow over one input. Jobs are claimed atomically with a lease by an
engine; an engine renews its leases while it works, and a lease whose engine died (its process is
gone, or the lease ran out) goes back to the queue. Jobs are claimed grouped by the agent they run
next, so that similar prompts reach the model server together.

Each flow's text is stored once, by hash, beside the jobs: the queue is self-contained, and a
flow file edited during the night does not change jobs already queued.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pantheon.core.store.jobs import (
    JOB_COLUMNS,
    STATUSES,
    Counts,
    Job,
    JobSummary,
    NodeRow,
    job_from_row,
    new_owner,
    owner_is_dead,
)
from pantheon.core.store.queuedb import DB_FILE, SCHEMA_VERSION, SQL_NOW, QueueDatabase
from pantheon.core.store.queuereads import QueueReads
from pantheon.core.store.queueurl import queue_url

__all__ = [
    "DB_FILE",
    "SCHEMA_VERSION",
    "STATUSES",
    "Counts",
    "Job",
    "JobQueue",
    "JobSummary",
    "NodeRow",
    "new_owner",
]


class JobQueue(QueueReads, QueueDatabase):
    """The queue in ``artifacts/pantheon.db``. One instance per thread.

    When ``ARTIFACTS/queue.json`` names a PostgreSQL database (``--queue postgresql://...``),
    ``JobQueue(artifacts)`` opens that one instead
    (:class:`~pantheon.core.store.pgqueue.PostgresQueue`, the same methods)."""

    def __new__(cls, artifacts: Path, *args: Any, **kwargs: Any) -> Any:
        if cls is JobQueue:
            url = queue_url(artifacts)
            if url is not None:
                from pantheon.core.store.pgqueue import PostgresQueue

                return PostgresQueue(artifacts, url, *args, **kwargs)
        return super().__new__(cls)

    # -- flows ------------------------------------------------------------------------------

    # -- jobs -------------------------------------------------------------------------------

    def enqueue(
        self,
        *,
        flow: str,
        flow_sha: str,
        flow_source: str,
        flow_text: str,
        first_agent: str,
        inputs: Iterable[dict[str, Any]],
        priority: int = 0,
    ) -> list[int]:
        """Add one job per input, in one transaction; return their ids."""
        now = time.time()
        rows = [
            (flow, flow_sha, json.dumps(inp, ensure_ascii=False), first_agent, priority, now, now)
            for inp in inputs
        ]
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO flows (sha256, name, source, text, added) "
                "VALUES (?, ?, ?, ?, ?)",
                (flow_sha, flow, flow_source, flow_text, now),
            )
            first = db.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0]
            db.executemany(
                "INSERT INTO jobs (flow, flow_sha, input, next_agent, priority, created, touched) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM jobs WHERE id > ? ORDER BY id", (first,)
                ).fetchall()
            ]
        return ids

    def claim(
        self,
        n: int,
        owner: str,
        *,
        lease_s: float = 60.0,
        prefer: Sequence[str] = (),
        max_wait_s: float = 300.0,
    ) -> list[Job]:
        """Claim up to ``n`` queued jobs, grouped by the agent they run next.

        Agents in ``prefer`` (those the engine is busy with) go first, then the agent of the
        oldest queued job; a job that has waited longer than ``max_wait_s`` goes before all.
        """
        if n <= 0:
            return []
        now = time.time()
        with self._write() as db:
            oldest = db.execute(
                "SELECT next_agent, created FROM jobs WHERE status = 'queued' "
                "ORDER BY priority DESC, id LIMIT 1"
            ).fetchone()
            if oldest is None:
                return []
            agents = list(dict.fromkeys(prefer))
            if oldest[1] < now - max_wait_s:
                agents.insert(0, oldest[0])
            elif oldest[0] not in agents:
                agents.append(oldest[0])
            ids: list[int] = []
            for agent in dict.fromkeys(agents):
                need = n - len(ids)
                if need <= 0:
                    break
                ids += [
                    r[0]
                    for r in db.execute(
                        "SELECT id FROM jobs WHERE status = 'queued' AND next_agent = ? "
                        "ORDER BY priority DESC, id LIMIT ?",
                        (agent, need),
                    )
                ]
            if len(ids) < n:
                taken = set(ids)
                for r in db.execute(
                    "SELECT id FROM jobs WHERE status = 'queued' "
                    "ORDER BY priority DESC, id LIMIT ?",
                    (n + len(taken),),
                ):
                    if r[0] not in taken and len(ids) < n:
                        ids.append(r[0])
            marks = ",".join("?" * len(ids))
            db.execute(
                f"UPDATE jobs SET touched = {SQL_NOW}, "
                "status = 'running', owner = ?, lease_until = ?, "
                f"attempts = attempts + 1, started = COALESCE(started, ?), error = NULL "
                f"WHERE id IN ({marks})",
                (owner, now + lease_s, now, *ids),
            )
            rows = db.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE id IN ({marks})", ids
            ).fetchall()
        order = {job_id: i for i, job_id in enumerate(ids)}
        return sorted((job_from_row(r) for r in rows), key=lambda j: order[j.id])

    def renew(self, owner: str, ids: Sequence[int], *, lease_s: float = 60.0) -> None:
        """Extend the leases this owner holds."""
        if not ids:
            return
        with self._write() as db:
            db.executemany(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND owner = ? AND status = 'running'",
                [(time.time() + lease_s, i, owner) for i in ids],
            )

    @staticmethod
    def _record_nodes(
        db: sqlite3.Connection, job_id: int, nodes: Sequence[NodeRow], next_agent: str | None
    ) -> None:
        now = time.time()
        db.executemany(
            "INSERT OR REPLACE INTO nodes (job_id, node, agent, status, seconds, finished) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(job_id, n.node, n.agent, n.status, n.seconds, now) for n in nodes],
        )
        if nodes or next_agent:
            db.execute(
                f"UPDATE jobs SET touched = {SQL_NOW}, "
                "node = COALESCE(?, node), next_agent = COALESCE(?, next_agent) "
                "WHERE id = ?",
                (nodes[-1].node if nodes else None, next_agent, job_id),
            )

    def advance(
        self, job_id: int, nodes: Sequence[NodeRow], *, next_agent: str | None = None
    ) -> None:
        """Record finished nodes and the agent the job runs next."""
        with self._write() as db:
            self._record_nodes(db, job_id, nodes, next_agent)

    def complete(
        self,
        job_id: int,
        owner: str,
        nodes: Sequence[NodeRow] = (),
        review: tuple[bool, bool] | None = None,
    ) -> bool:
        """Mark a job done, with the nodes it ran (and its two reviewers' verdicts, if any);
        False when this owner no longer holds it."""
        return self._finish(job_id, owner, "done", None, nodes, review)

    def fail(
        self,
        job_id: int,
        owner: str,
        error: str,
        nodes: Sequence[NodeRow] = (),
        review: tuple[bool, bool] | None = None,
    ) -> bool:
        """Mark a job failed with the reason, and the nodes it ran."""
        return self._finish(job_id, owner, "failed", error, nodes, review)

    def _finish(
        self,
        job_id: int,
        owner: str,
        status: str,
        error: str | None,
        nodes: Sequence[NodeRow],
        review: tuple[bool, bool] | None = None,
    ) -> bool:
        with self._write() as db:
            cur = db.execute(
                f"UPDATE jobs SET touched = {SQL_NOW}, "
                "status = ?, finished = ?, error = ?, owner = NULL, "
                "lease_until = NULL WHERE id = ? AND owner = ? AND status = 'running'",
                (status, time.time(), error, job_id, owner),
            )
            if cur.rowcount != 1:
                return False
            self._record_nodes(db, job_id, nodes, None)
            if review is not None:
                db.execute(
                    "INSERT OR REPLACE INTO reviews (job_id, flow, first, second, at) "
                    "SELECT id, flow, ?, ?, ? FROM jobs WHERE id = ?",
                    (int(review[0]), int(review[1]), time.time(), job_id),
                )
            return True

    def release(self, owner: str, ids: Sequence[int] | None = None) -> int:
        """Give jobs back to the queue (a stop before they finished); returns how many."""
        with self._write() as db:
            if ids is None:
                cur = db.execute(
                    f"UPDATE jobs SET touched = {SQL_NOW}, "
                    "status = 'queued', owner = NULL, lease_until = NULL, "
                    "attempts = MAX(attempts - 1, 0) WHERE owner = ? AND status = 'running'",
                    (owner,),
                )
            else:
                cur = db.executemany(
                    f"UPDATE jobs SET touched = {SQL_NOW}, "
                    "status = 'queued', owner = NULL, lease_until = NULL, "
                    "attempts = MAX(attempts - 1, 0) WHERE id = ? AND owner = ? "
                    "AND status = 'running'",
                    [(i, owner) for i in ids],
                )
            return cur.rowcount

    def requeue_orphans(self, *, max_attempts: int = 3) -> tuple[int, int]:
        """Requeue running jobs whose engine died or whose lease expired.

        A job that has already been claimed ``max_attempts`` times fails instead (it may be what
        kills the engine). Returns (requeued, failed).
        """
        now = time.time()
        with self._write() as db:
            rows = db.execute(
                "SELECT id, owner, lease_until, attempts FROM jobs WHERE status = 'running'"
            ).fetchall()
            orphans = [
                (i, attempts)
                for i, owner, lease, attempts in rows
                if (lease is not None and lease < now) or owner_is_dead(owner)
            ]
            again = [(i,) for i, attempts in orphans if attempts < max_attempts]
            dead = [
                (
                    now,
                    f"abandoned after {attempts} attempts: the engine stopped while running it",
                    i,
                )
                for i, attempts in orphans
                if attempts >= max_attempts
            ]
            db.executemany(
                f"UPDATE jobs SET touched = {SQL_NOW}, "
                "status = 'queued', owner = NULL, lease_until = NULL WHERE id = ?",
                again,
            )
            db.executemany(
                f"UPDATE jobs SET touched = {SQL_NOW}, "
                "status = 'failed', finished = ?, error = ?, owner = NULL, "
                "lease_until = NULL WHERE id = ?",
                dead,
            )
        return len(again), len(dead)

    def retry_failed(self, ids: Sequence[int] | None = None) -> int:
        """Put failed jobs back in the queue (their finished nodes are not run again)."""
        sql = (
            f"UPDATE jobs SET touched = {SQL_NOW}, "
            "status = 'queued', attempts = 0, finished = NULL, error = NULL, "
            "next_agent = COALESCE((SELECT agent FROM nodes WHERE nodes.job_id = jobs.id "
            "AND nodes.status = 'failed' LIMIT 1), next_agent) WHERE status = 'failed'"
        )
        with self._write() as db:
            if ids is None:
                cur = db.execute(sql)
            else:
                cur = db.executemany(sql + " AND id = ?", [(i,) for i in ids])
            return cur.rowcount

    # -- small durable values ---------------------------------------------------------------

    def set_value(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key`` (replacing what was there), durably."""
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO kv (key, value, at) VALUES (?, ?, ?)",
                (key, value, time.time()),
            )

    def values(self, prefix: str) -> dict[str, str]:
        """Every value kept under a key that starts with ``prefix``."""
        rows = self._read(
            "SELECT key, value FROM kv WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
        )
        return dict(rows)

    def delete_value(self, key: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM kv WHERE key = ?", (key,))

    # -- reading ----------------------------------------------------------------------------

    def summaries(
        self, *, changed_since: float | None = None, also: Iterable[int] = ()
    ) -> list[JobSummary]:
        """Every job, oldest first, without its input.

        With ``changed_since`` (epoch seconds): only the jobs whose row changed since then
        (``touched``, an index), and the jobs in ``also``. A failed job names the node that
        failed.
        """
        failed = (
            "SELECT {} FROM nodes WHERE job_id = j.id AND status = 'failed' ORDER BY node LIMIT 1"
        )
        sql = (
            "SELECT j.id, j.flow, j.status, j.next_agent, "
            f"COALESCE(({failed.format('node')}), j.node), j.attempts, j.created, j.started, "
            f"j.finished, j.error, COALESCE(({failed.format('agent')}), n.agent), j.flow_sha "
            "FROM jobs j LEFT JOIN nodes n ON n.job_id = j.id AND n.node = j.node"
        )
        if changed_since is None:
            rows = self._read(f"{sql} ORDER BY j.id")
        else:
            rows = self._read(
                f"{sql} WHERE j.id IN (SELECT id FROM jobs WHERE touched >= ?1 "
                "UNION SELECT value FROM json_each(?2)) ORDER BY j.id",
                (changed_since, json.dumps(sorted(also))),
            )
        return [JobSummary(*r) for r in rows]
