"""The queue on PostgreSQL: its tables beside PgQueuer's, the connection, and the one
translation of PostgreSQL's errors into :class:`~pantheon.core.errors.QueueError`.

PgQueuer (a maintained queue library on PostgreSQL) holds the claimable work: one row per job
that is waiting, keyed by the agent it runs next, picked with ``FOR UPDATE SKIP LOCKED`` and
taken over when its heartbeat is older than the lease. Pantheon's own tables hold what the
console, the report and the trainer read (the jobs, their nodes, the reviewers' verdicts, small
values), and the fence a late engine meets: the owner of each running job.

All of it runs on one private event loop per queue object (PgQueuer's API is asynchronous; the
queue's callers are not), on one connection, so a library call and Pantheon's own statements
share a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

from pantheon.core.errors import QueueError

__all__ = [
    "PG_SCHEMA_VERSION",
    "SCHEMA",
    "SQL_NOW",
    "EventLoop",
    "PostgresDatabase",
    "pg_error",
    "redacted",
]

T = TypeVar("T")

PG_SCHEMA_VERSION = 1
"""The version of Pantheon's tables; a queue written by a newer Pantheon is refused."""
MIGRATE_LOCK = 0x50414E54
"""The advisory lock two engines opening a new queue at once take, so one installs it."""
SQL_NOW = "extract(epoch from clock_timestamp())"

SCHEMA = """
CREATE TABLE IF NOT EXISTS pantheon_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS pantheon_flows (
    sha256 text PRIMARY KEY, name text NOT NULL, source text NOT NULL, text text NOT NULL,
    added double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS pantheon_jobs (
    id          bigserial PRIMARY KEY,
    flow        text NOT NULL,
    flow_sha    text NOT NULL REFERENCES pantheon_flows(sha256),
    input       text NOT NULL,
    status      text NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'done', 'failed')),
    next_agent  text NOT NULL,
    node        text,
    priority    integer NOT NULL DEFAULT 0,
    attempts    integer NOT NULL DEFAULT 0,
    owner       text,
    lease_until double precision,
    created     double precision NOT NULL,
    started     double precision,
    finished    double precision,
    error       text,
    touched     double precision,
    pgq_id      bigint
);
CREATE INDEX IF NOT EXISTS pantheon_jobs_by_status ON pantheon_jobs (status, next_agent);
CREATE INDEX IF NOT EXISTS pantheon_jobs_by_touched ON pantheon_jobs (touched);
CREATE TABLE IF NOT EXISTS pantheon_nodes (
    job_id bigint NOT NULL REFERENCES pantheon_jobs(id), node text NOT NULL,
    agent text NOT NULL, status text NOT NULL CHECK (status IN ('done', 'failed')),
    seconds double precision NOT NULL, finished double precision NOT NULL,
    PRIMARY KEY (job_id, node)
);
CREATE TABLE IF NOT EXISTS pantheon_reviews (
    job_id bigint PRIMARY KEY REFERENCES pantheon_jobs(id), flow text NOT NULL,
    first boolean NOT NULL, second boolean NOT NULL, at double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS pantheon_kv (
    key text PRIMARY KEY, value text NOT NULL, at double precision NOT NULL
);
"""


def redacted(url: str) -> str:
    """The URL without its password, to name the queue in a message."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def pg_error(exc: BaseException, where: str) -> QueueError:
    """A PostgreSQL or connection error as the queue's clear error."""
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    lost = ("connection", "server closed", "terminating", "Connection refused", "timeout")
    if any(word.lower() in text.lower() for word in lost):
        return QueueError(
            f"the queue at {where} cannot be reached ({text})",
            hint="start PostgreSQL (or check --queue URL); an engine pauses its claims and "
            "goes on when the queue answers again",
        )
    return QueueError(f"the queue at {where} failed: {text}")


class EventLoop:
    """A private asyncio loop on a thread of its own: coroutines are run on it from any
    thread (a Textual screen's included) and waited for."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="pantheon-postgres", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class PostgresDatabase:
    """The connection to the queue's database, brought to this schema, on a private loop."""

    def __init__(
        self,
        artifacts: Path,
        url: str,
        *,
        create: bool = True,
        timeout_s: float = 10.0,
        shared: bool = False,
    ) -> None:
        self.artifacts = Path(artifacts)
        self.url = url
        self.path = redacted(url)
        """Where the queue is, as messages name it."""
        self.timeout_s = max(timeout_s, 5.0)
        self.lease_s = 60.0
        self._loop = EventLoop()
        self._conn: Any = None
        self._q: Any = None
        try:
            self._call(self._open())
        except BaseException:
            self.close()
            raise

    # -- plumbing ---------------------------------------------------------------------------

    def _call(self, coro: Any) -> Any:
        try:
            return self._loop.run(coro, self.timeout_s * 6)
        except QueueError:
            raise
        except Exception as exc:
            self._drop()
            raise pg_error(exc, self.path) from None

    def _drop(self) -> None:
        """A broken connection is closed; the next call opens another."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # it is broken already
                self._loop.run(conn.close(), 5)

    async def _connect(self) -> None:
        import psycopg
        from pgqueuer.queries import Queries

        self._conn = await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=int(self.timeout_s)
        )
        self._q = Queries.from_psycopg_connection(self._conn)

    async def _db(self) -> Any:
        if self._conn is None or self._conn.closed:
            await self._connect()
        return self._conn

    async def _open(self) -> None:
        conn = await self._db()
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
        try:
            if not await self._q.schema_is_installed():
                await self._q.install()
            elif (await self._q.plan_upgrade()).statements:
                await self._q.apply_upgrade()
            await conn.execute(SCHEMA)
            cur = await conn.execute("SELECT value FROM pantheon_meta WHERE key = 'schema'")
            row = await cur.fetchone()
            if row is not None and int(row[0]) > PG_SCHEMA_VERSION:
                raise QueueError(
                    f"the queue at {self.path} was written by a newer Pantheon (schema {row[0]} "
                    f"> {PG_SCHEMA_VERSION})",
                    hint="upgrade Pantheon on this host, or give another --queue database",
                )
            if row is None:
                await conn.execute(
                    "INSERT INTO pantheon_meta VALUES ('schema', %s)", (str(PG_SCHEMA_VERSION),)
                )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        conn = await self._db()
        cur = await conn.execute(sql, args)
        return await cur.fetchall()

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self._call(self._fetch(sql, args))

    def close(self) -> None:
        self._drop()
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
