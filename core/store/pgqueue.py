"""The durable job queue on PostgreSQL, for engines on several hosts (``--queue
postgresql://...``): the same methods as the SQLite queue
(:class:`~pantheon.core.store.queue.JobQueue`).

Claims go through PgQueuer: ``dequeue`` picks up to N waiting jobs of the agents asked for,
highest priority first, and takes back a job whose heartbeat is older than the lease (its engine
died: a killed process, a lost host) in the same statement. ``renew`` is the heartbeat. The
owner of each running job is kept in Pantheon's table and checked, in the same transaction,
when a job is recorded, so an engine whose lease ran out cannot record a job another engine
now runs: nothing is recorded twice. A job taken back more than ``max_attempts`` times fails
(it may be what kills engines). A connection lost mid-night is a QueueError (the engine waits
and tries again) and is opened again on the next call.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any, ClassVar

from pantheon.core.store.jobs import (
    JOB_COLUMNS,
    Job,
    JobSummary,
    NodeRow,
    job_from_row,
    owner_is_dead,
)
from pantheon.core.store.pgschema import SQL_NOW, PostgresDatabase
from pantheon.core.store.queuereads import QueueReads

__all__ = ["PostgresQueue"]

ABANDONED = "abandoned after {n} attempts: the engine stopped while running it"


class PostgresQueue(QueueReads, PostgresDatabase):
    """The queue in a PostgreSQL database. One instance per thread, as the SQLite one."""

    TABLES: ClassVar[dict[str, str]] = {name: f"pantheon_{name}" for name in QueueReads.TABLES}
    MARK = "%s"

    hosts_share = True
    """Engines on several hosts share it: the pauses are the fleet's."""

    # -- flows and jobs ---------------------------------------------------------------------

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
        texts = [json.dumps(inp, ensure_ascii=False) for inp in inputs]

        async def go() -> list[int]:
            conn, now = await self._db(), time.time()
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO pantheon_flows VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (sha256) DO NOTHING",
                    (flow_sha, flow, flow_source, flow_text, now),
                )
                ids = []
                for text in texts:
                    cur = await conn.execute(
                        "INSERT INTO pantheon_jobs (flow, flow_sha, input, next_agent, priority, "
                        "created, touched) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                        (flow, flow_sha, text, first_agent, priority, now, now),
                    )
                    ids.append((await cur.fetchone())[0])
                if ids:
                    await self._offer(conn, ids, [first_agent] * len(ids), [priority] * len(ids))
            return ids

        return self._call(go())

    async def _offer(self, conn: Any, ids: list[int], agents: list[str], prios: list[int]) -> None:
        """Make jobs claimable: one PgQueuer row each, under the agent it runs next."""
        pgq = await self._q.enqueue(agents, [str(i).encode() for i in ids], prios)
        for job_id, pgq_id in zip(ids, pgq, strict=True):
            await conn.execute(
                "UPDATE pantheon_jobs SET pgq_id = %s WHERE id = %s", (pgq_id, job_id)
            )

    def claim(
        self,
        n: int,
        owner: str,
        *,
        lease_s: float = 60.0,
        prefer: Sequence[str] = (),
        max_wait_s: float = 300.0,
        max_attempts: int = 3,
    ) -> list[Job]:
        """Up to ``n`` jobs, the agents in ``prefer`` first; a job whose engine stopped beating
        for ``lease_s`` is taken back here."""
        from pgqueuer.queries import EntrypointExecutionParameter

        if n <= 0:
            return []
        self.lease_s = lease_s
        manager = uuid.uuid5(uuid.NAMESPACE_URL, owner)

        def params(agents: Iterable[str]) -> dict[str, Any]:
            return {a: EntrypointExecutionParameter(concurrency_limit=0) for a in agents}

        async def go() -> list[Job]:
            conn, now = await self._db(), time.time()
            lease = timedelta(seconds=lease_s)
            async with conn.transaction():
                cur = await conn.execute(
                    "SELECT DISTINCT next_agent FROM pantheon_jobs "
                    "WHERE status IN ('queued', 'running')"
                )
                agents = [r[0] for r in await cur.fetchall()]
                if not agents:
                    return []
                picked = []
                first = [a for a in dict.fromkeys(prefer) if a in agents]
                if first:
                    picked += await self._q.dequeue(n, params(first), manager, None, lease)
                if len(picked) < n:
                    picked += await self._q.dequeue(
                        n - len(picked), params(agents), manager, None, lease
                    )
                jobs = []
                for row in picked:
                    cur = await conn.execute(
                        f"UPDATE pantheon_jobs SET touched = {SQL_NOW}, status = 'running', "
                        "owner = %s, lease_until = %s, attempts = attempts + 1, "
                        "started = COALESCE(started, %s), error = NULL WHERE id = %s "
                        f"RETURNING {JOB_COLUMNS}",
                        (owner, now + lease_s, now, int(row.payload)),
                    )
                    found = await cur.fetchone()
                    if found is None:  # not ours any more (a job retried by hand): let it go
                        await self._q.log_jobs([(row, "canceled", None)])
                        continue
                    job = job_from_row(found)
                    if job.attempts > max_attempts:
                        await self._q.log_jobs([(row, "exception", None)])
                        await conn.execute(
                            f"UPDATE pantheon_jobs SET touched = {SQL_NOW}, status = 'failed', "
                            "finished = %s, error = %s, owner = NULL, lease_until = NULL "
                            "WHERE id = %s",
                            (now, ABANDONED.format(n=job.attempts - 1), job.id),
                        )
                        continue
                    jobs.append(job)
            return jobs

        return self._call(go())

    def renew(self, owner: str, ids: Sequence[int], *, lease_s: float = 60.0) -> None:
        if not ids:
            return

        async def go() -> None:
            conn = await self._db()
            cur = await conn.execute(
                "UPDATE pantheon_jobs SET lease_until = %s WHERE id = ANY(%s) AND owner = %s "
                "AND status = 'running' RETURNING pgq_id",
                (time.time() + lease_s, list(ids), owner),
            )
            await self._q.update_heartbeat([r[0] for r in await cur.fetchall()])

        self._call(go())

    @staticmethod
    async def _record_nodes(
        conn: Any, job_id: int, nodes: Sequence[NodeRow], next_agent: str | None
    ) -> None:
        now = time.time()
        for n in nodes:
            await conn.execute(
                "INSERT INTO pantheon_nodes VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT "
                "(job_id, node) DO UPDATE SET agent = EXCLUDED.agent, status = EXCLUDED.status, "
                "seconds = EXCLUDED.seconds, finished = EXCLUDED.finished",
                (job_id, n.node, n.agent, n.status, n.seconds, now),
            )
        if nodes or next_agent:
            await conn.execute(
                f"UPDATE pantheon_jobs SET touched = {SQL_NOW}, node = COALESCE(%s, node), "
                "next_agent = COALESCE(%s, next_agent) WHERE id = %s",
                (nodes[-1].node if nodes else None, next_agent, job_id),
            )

    def advance(
        self, job_id: int, nodes: Sequence[NodeRow], *, next_agent: str | None = None
    ) -> None:
        async def go() -> None:
            conn = await self._db()
            async with conn.transaction():
                await self._record_nodes(conn, job_id, nodes, next_agent)

        self._call(go())

    def complete(
        self,
        job_id: int,
        owner: str,
        nodes: Sequence[NodeRow] = (),
        review: tuple[bool, bool] | None = None,
    ) -> bool:
        return self._finish(job_id, owner, "done", None, nodes, review)

    def fail(
        self,
        job_id: int,
        owner: str,
        error: str,
        nodes: Sequence[NodeRow] = (),
        review: tuple[bool, bool] | None = None,
    ) -> bool:
        return self._finish(job_id, owner, "failed", error, nodes, review)

    async def _pgq_rows(self, conn: Any, where: str, args: Sequence[Any]) -> list[Any]:
        """PgQueuer's rows of the jobs ``where`` names (those still in its queue)."""
        cur = await conn.execute(f"SELECT pgq_id FROM pantheon_jobs WHERE {where}", args)
        rows = []
        for (pgq_id,) in await cur.fetchall():
            if pgq_id is not None:
                row = await self._q.queue_job_by_id(pgq_id)
                if row is not None:
                    rows.append(row)
        return rows

    def _finish(
        self,
        job_id: int,
        owner: str,
        status: str,
        error: str | None,
        nodes: Sequence[NodeRow],
        review: tuple[bool, bool] | None,
    ) -> bool:
        async def go() -> bool:
            from psycopg import Rollback

            conn = await self._db()
            held = True
            async with conn.transaction():
                # the library's row first (the order a claim locks them in), then the fence
                mine = "id = %s AND owner = %s AND status = 'running'"
                rows = await self._pgq_rows(conn, mine, (job_id, owner))
                verdict = "successful" if status == "done" else "exception"
                if rows:
                    await self._q.log_jobs([(r, verdict, None) for r in rows])
                cur = await conn.execute(
                    f"UPDATE pantheon_jobs SET touched = {SQL_NOW}, status = %s, "
                    "finished = %s, error = %s, owner = NULL, lease_until = NULL "
                    f"WHERE {mine}",
                    (status, time.time(), error, job_id, owner),
                )
                if cur.rowcount != 1:  # another engine holds it now: record nothing
                    held = False
                    raise Rollback
                await self._record_nodes(conn, job_id, nodes, None)
                if review is not None:
                    await conn.execute(
                        "INSERT INTO pantheon_reviews SELECT id, flow, %s, %s, %s "
                        "FROM pantheon_jobs WHERE id = %s ON CONFLICT (job_id) DO UPDATE "
                        "SET first = EXCLUDED.first, second = EXCLUDED.second, "
                        "at = EXCLUDED.at",
                        (review[0], review[1], time.time(), job_id),
                    )
            return held

        return self._call(go())

    async def _requeue(self, conn: Any, where: str, args: Sequence[Any], sets: str) -> int:
        """Jobs ``where`` names back to the queue, claimable again under their next agent."""
        old = await self._pgq_rows(conn, where, args)
        if old:
            await self._q.log_jobs([(r, "canceled", None) for r in old])
        cur = await conn.execute(
            f"UPDATE pantheon_jobs SET touched = {SQL_NOW}, status = 'queued', owner = NULL, "
            f"lease_until = NULL{sets} WHERE {where} RETURNING id, next_agent, priority",
            args,
        )
        rows = await cur.fetchall()
        if rows:
            await self._offer(
                conn, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
            )
        return len(rows)

    def release(self, owner: str, ids: Sequence[int] | None = None) -> int:
        async def go() -> int:
            conn = await self._db()
            async with conn.transaction():
                if ids is None:
                    where, args = "owner = %s AND status = 'running'", (owner,)
                else:
                    where = "id = ANY(%s) AND owner = %s AND status = 'running'"
                    args = (list(ids), owner)
                return await self._requeue(
                    conn, where, args, ", attempts = GREATEST(attempts - 1, 0)"
                )

        return self._call(go())

    def requeue_orphans(self, *, max_attempts: int = 3) -> tuple[int, int]:
        """Jobs of engines that died on this host go back at once; a job whose lease ran out
        elsewhere is taken back by the next claim (PgQueuer re-picks it), so it is counted
        here but left to that claim."""

        async def go() -> tuple[int, int]:
            conn = await self._db()
            cur = await conn.execute(
                "SELECT id, owner, lease_until FROM pantheon_jobs WHERE status = 'running'"
            )
            rows = await cur.fetchall()
            # a running job with no lease was never claimed through a live engine; an expired
            # lease elsewhere is left to the next claim, which PgQueuer re-picks
            dead = [i for i, owner, lease in rows if lease is None or owner_is_dead(owner)]
            if dead:
                async with conn.transaction():
                    await self._requeue(conn, "id = ANY(%s) AND status = 'running'", (dead,), "")
            return len(dead), 0

        return self._call(go())

    def retry_failed(self, ids: Sequence[int] | None = None) -> int:
        async def go() -> int:
            conn = await self._db()
            where, args = "status = 'failed'", ()
            if ids is not None:
                where, args = "status = 'failed' AND id = ANY(%s)", (list(ids),)
            async with conn.transaction():
                await conn.execute(
                    "UPDATE pantheon_jobs j SET next_agent = COALESCE((SELECT agent FROM "
                    "pantheon_nodes n WHERE n.job_id = j.id AND n.status = 'failed' LIMIT 1), "
                    f"next_agent), finished = NULL, error = NULL, attempts = 0 WHERE {where}",
                    args,
                )
                return await self._requeue(conn, where, args, "")

        return self._call(go())

    # -- small durable values and reading ---------------------------------------------------

    def set_value(self, key: str, value: str) -> None:
        self._read(
            "INSERT INTO pantheon_kv VALUES (%s, %s, %s) ON CONFLICT (key) DO UPDATE SET "
            "value = EXCLUDED.value, at = EXCLUDED.at RETURNING key",
            (key, value, time.time()),
        )

    def values(self, prefix: str) -> dict[str, str]:
        rows = self._read(
            "SELECT key, value FROM pantheon_kv WHERE left(key, %s) = %s", (len(prefix), prefix)
        )
        return dict(rows)

    def delete_value(self, key: str) -> None:
        self._read("DELETE FROM pantheon_kv WHERE key = %s RETURNING key", (key,))

    def summaries(
        self, *, changed_since: float | None = None, also: Iterable[int] = ()
    ) -> list[JobSummary]:
        failed = (
            "SELECT {} FROM pantheon_nodes WHERE job_id = j.id AND status = 'failed' "
            "ORDER BY node LIMIT 1"
        )
        sql = (
            "SELECT j.id, j.flow, j.status, j.next_agent, "
            f"COALESCE(({failed.format('node')}), j.node), j.attempts, j.created, j.started, "
            f"j.finished, j.error, COALESCE(({failed.format('agent')}), n.agent), j.flow_sha "
            "FROM pantheon_jobs j LEFT JOIN pantheon_nodes n ON n.job_id = j.id AND n.node = j.node"
        )
        if changed_since is None:
            rows = self._read(f"{sql} ORDER BY j.id")
        else:
            rows = self._read(
                f"{sql} WHERE j.touched >= %s OR j.id = ANY(%s) ORDER BY j.id",
                (changed_since, sorted(also)),
            )
        return [JobSummary(*r) for r in rows]
