"""The durable job queue: SQLite in WAL mode at ``artifacts/pantheon.db``.

A job is one run of a flow over one input. Jobs are claimed atomically with a lease by an
engine; an engine renews its leases while it works, and a lease whose engine died (its process is
gone, or the lease ran out) goes back to the queue. Jobs are claimed grouped by the agent they run
next, so that similar prompts reach the model server together.

Each flow's text is stored once, by hash, beside the jobs: the queue is self-contained, and a
flow file edited during the night does not change jobs already queued.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pantheon.core.errors import QueueError

__all__ = ["STATUSES", "Counts", "Job", "JobQueue", "JobSummary", "NodeRow", "new_owner"]

DB_FILE = "pantheon.db"
SCHEMA_VERSION = 4
STATUSES = ("queued", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flows (
    sha256  TEXT PRIMARY KEY,
    name    TEXT NOT NULL,
    source  TEXT NOT NULL,
    text    TEXT NOT NULL,
    added   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    flow        TEXT NOT NULL,
    flow_sha    TEXT NOT NULL REFERENCES flows(sha256),
    input       TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'done', 'failed')),
    next_agent  TEXT NOT NULL,
    node        TEXT,
    priority    INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    owner       TEXT,
    lease_until REAL,
    created     REAL NOT NULL,
    started     REAL,
    finished    REAL,
    error       TEXT,
    touched     REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_agent ON jobs (status, next_agent, priority DESC, id);
CREATE INDEX IF NOT EXISTS jobs_by_age ON jobs (status, priority DESC, id);
CREATE INDEX IF NOT EXISTS jobs_by_flow ON jobs (flow, status);
CREATE TABLE IF NOT EXISTS nodes (
    job_id   INTEGER NOT NULL REFERENCES jobs(id),
    node     TEXT NOT NULL,
    agent    TEXT NOT NULL,
    status   TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    seconds  REAL NOT NULL,
    finished REAL NOT NULL,
    PRIMARY KEY (job_id, node)
);
CREATE INDEX IF NOT EXISTS nodes_by_agent ON nodes (agent, status);
CREATE INDEX IF NOT EXISTS nodes_by_time ON nodes (finished);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created);
CREATE INDEX IF NOT EXISTS jobs_by_finished ON jobs (finished);
CREATE TABLE IF NOT EXISTS reviews (
    job_id   INTEGER PRIMARY KEY REFERENCES jobs(id),
    flow     TEXT NOT NULL,
    first    INTEGER NOT NULL,
    second   INTEGER NOT NULL,
    at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_by_time ON reviews (at);
CREATE TABLE IF NOT EXISTS kv (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL,
    at      REAL NOT NULL
);
"""

# v3: ``jobs.touched``, when a job's row last changed in a way a reader can see (not a lease
# renewal); every statement here that changes such a column sets it. A reader asks for what
# changed since its last look through an index instead of scanning every job.
_TOUCHED = """
CREATE INDEX IF NOT EXISTS jobs_by_touched ON jobs (touched);
DROP TRIGGER IF EXISTS jobs_touch_insert;
DROP TRIGGER IF EXISTS jobs_touch_update;
"""
# v4: ``kv``, small values the engine keeps durably beside the jobs (the last good controls).
_NO_ROOM = frozenset({"SQLITE_FULL", "SQLITE_IOERR_SHMSIZE"})
"""What SQLite says when the disk has no room: the database cannot grow, or the shared-memory
file beside it cannot be made (opening a WAL database on a full disk)."""
_NOW = "(julianday('now') - 2440587.5) * 86400.0"
"""Now, in epoch seconds, as SQLite computes it."""


def _statements(script: str) -> list[str]:
    """The complete SQL statements of a script (a trigger's body holds semicolons too)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return out


def new_owner() -> str:
    """A lease owner id for this process: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_is_dead(owner: str | None) -> bool:
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


_JOB_COLS = (
    "id, flow, flow_sha, input, status, next_agent, node, attempts, created, started, finished, "
    "error"
)


def _job(row: Sequence[Any]) -> Job:
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


class JobQueue:
    """The queue in ``artifacts/pantheon.db``. One instance per thread."""

    def __init__(
        self,
        artifacts: Path,
        *,
        create: bool = True,
        timeout_s: float = 10.0,
        shared: bool = False,
    ) -> None:
        """``shared``: the connection may be used from several threads, one at a time (the
        caller serializes)."""
        self.artifacts = Path(artifacts)
        self.path = self.artifacts / DB_FILE
        if not create and not self.path.exists():
            raise QueueError(
                f"there is no queue at {self.path}",
                hint="enqueue jobs first (`pantheon enqueue FLOW ...`), or pass --artifacts DIR",
            )
        if create:
            try:
                self.artifacts.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise QueueError(
                    f"cannot create the artifacts directory {self.artifacts}: "
                    f"{exc.strerror or exc} ({exc.filename or self.artifacts})",
                    hint="point --artifacts at a folder you can write",
                ) from None
        try:
            self._db = sqlite3.connect(
                self.path, timeout=timeout_s, isolation_level=None, check_same_thread=not shared
            )
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise QueueError(
                    f"{self.path} was written by a newer Pantheon (schema {version} > "
                    f"{SCHEMA_VERSION})",
                    hint="upgrade Pantheon, or use another --artifacts directory",
                )
            if version < SCHEMA_VERSION:
                self._migrate()
        except sqlite3.Error as exc:
            self._db.close()
            raise self._error(exc) from None
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        """Bring an older (or new, empty) database to this schema, under the write lock, so
        that two processes opening it at once do it once."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                for statement in _statements(_SCHEMA):
                    db.execute(statement)
                columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
                if "touched" not in columns:  # a version 1 or 2 database
                    db.execute("ALTER TABLE jobs ADD COLUMN touched REAL")
                    db.execute("UPDATE jobs SET touched = COALESCE(finished, started, created)")
                for statement in _statements(_TOUCHED):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    # -- plumbing ---------------------------------------------------------------------------

    def _error(self, exc: sqlite3.Error) -> QueueError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return QueueError(
                f"the queue database {self.path} is locked by another process ({text})",
                hint="another engine or tool holds a long write; wait and retry, or stop it",
            )
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return QueueError(
                f"the queue database {self.path} is corrupt ({text})",
                hint="move it aside (the runs/ folder keeps every artifact) and enqueue again",
            )
        if "disk is full" in text or getattr(exc, "sqlite_errorname", "") in _NO_ROOM:
            return QueueError(
                f"the queue database {self.path} has no room: the disk is full ({text})",
                hint="free some space; nothing was lost (a change that did not fit was not made)",
            )
        if "readonly" in text or "unable to open" in text or "read-only" in text:
            return QueueError(
                f"cannot write the queue database {self.path} ({text})",
                hint="make the artifacts directory writable, or pass another --artifacts",
            )
        return QueueError(f"the queue database {self.path} failed: {text}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            yield self._db
        except sqlite3.Error as exc:
            self._rollback()
            raise self._error(exc) from None
        except BaseException:
            self._rollback()
            raise
        else:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise self._error(exc) from None

    def _rollback(self) -> None:
        # SQLite rolls back by itself on some errors (a full disk): then there is nothing to undo
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- flows ------------------------------------------------------------------------------

    def flow_text(self, sha256: str) -> tuple[str, str]:
        """The (source, text) of a stored flow."""
        rows = self._read("SELECT source, text FROM flows WHERE sha256 = ?", (sha256,))
        if not rows:
            raise QueueError(f"flow {sha256[:12]} is not in {self.path}")
        return rows[0][0], rows[0][1]

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
                f"UPDATE jobs SET touched = {_NOW}, "
                "status = 'running', owner = ?, lease_until = ?, "
                f"attempts = attempts + 1, started = COALESCE(started, ?), error = NULL "
                f"WHERE id IN ({marks})",
                (owner, now + lease_s, now, *ids),
            )
            rows = db.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id IN ({marks})", ids).fetchall()
        order = {job_id: i for i, job_id in enumerate(ids)}
        return sorted((_job(r) for r in rows), key=lambda j: order[j.id])

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
                f"UPDATE jobs SET touched = {_NOW}, "
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
                f"UPDATE jobs SET touched = {_NOW}, "
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
                    f"UPDATE jobs SET touched = {_NOW}, "
                    "status = 'queued', owner = NULL, lease_until = NULL, "
                    "attempts = MAX(attempts - 1, 0) WHERE owner = ? AND status = 'running'",
                    (owner,),
                )
            else:
                cur = db.executemany(
                    f"UPDATE jobs SET touched = {_NOW}, "
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
                if (lease is not None and lease < now) or _owner_is_dead(owner)
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
                f"UPDATE jobs SET touched = {_NOW}, "
                "status = 'queued', owner = NULL, lease_until = NULL WHERE id = ?",
                again,
            )
            db.executemany(
                f"UPDATE jobs SET touched = {_NOW}, "
                "status = 'failed', finished = ?, error = ?, owner = NULL, "
                "lease_until = NULL WHERE id = ?",
                dead,
            )
        return len(again), len(dead)

    def retry_failed(self, ids: Sequence[int] | None = None) -> int:
        """Put failed jobs back in the queue (their finished nodes are not run again)."""
        sql = (
            f"UPDATE jobs SET touched = {_NOW}, "
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

    def get_value(self, key: str) -> str | None:
        """The value kept under ``key``, or None."""
        rows = self._read("SELECT value FROM kv WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    # -- reading ----------------------------------------------------------------------------

    def get(self, job_id: int) -> Job:
        rows = self._read(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise QueueError(f"no job {job_id} in {self.path}")
        return _job(rows[0])

    def jobs(self, *, status: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        if status is None:
            rows = self._read(
                f"SELECT {_JOB_COLS} FROM jobs ORDER BY id LIMIT ? OFFSET ?", (limit, offset)
            )
        else:
            rows = self._read(
                f"SELECT {_JOB_COLS} FROM jobs WHERE status = ? ORDER BY id LIMIT ? OFFSET ?",
                (status, limit, offset),
            )
        return [_job(r) for r in rows]

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

    def node_rows(self) -> list[tuple[int, str, str, str, float]]:
        """Every finished node: (job id, node, agent, status, seconds)."""
        return [
            tuple(r) for r in self._read("SELECT job_id, node, agent, status, seconds FROM nodes")
        ]

    def node_agents(self, job_id: int) -> dict[str, tuple[str, str, float]]:
        """The nodes a job finished: node id -> (agent, status, seconds)."""
        return {
            node: (agent, status, seconds)
            for node, agent, status, seconds in self._read(
                "SELECT node, agent, status, seconds FROM nodes WHERE job_id = ?", (job_id,)
            )
        }

    def counts(self) -> Counts:
        by_flow: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATUSES, 0))
        for flow, status, n in self._read(
            "SELECT flow, status, COUNT(*) FROM jobs GROUP BY flow, status"
        ):
            by_flow[flow][status] = n
        by_agent: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATUSES, 0))
        for agent, status, n in self._read(
            "SELECT next_agent, status, COUNT(*) FROM jobs "
            "WHERE status IN ('queued', 'running') GROUP BY next_agent, status"
        ):
            by_agent[agent][status] = n
        for agent, status, n in self._read(
            "SELECT agent, status, COUNT(*) FROM nodes GROUP BY agent, status"
        ):
            by_agent[agent][status] = n
        return Counts(dict(by_flow), dict(by_agent))

    def window(self, since: float) -> dict[str, Any]:
        """What happened since ``since`` (epoch seconds): arrivals, finished jobs and their mean
        service time, and per agent the nodes finished, their mean seconds and pass rate."""
        arrivals, first = self._read(
            "SELECT COUNT(*), MIN(created) FROM jobs WHERE created >= ?", (since,)
        )[0]
        finished, service = self._read(
            "SELECT COUNT(*), AVG(finished - started) FROM jobs "
            "WHERE finished >= ? AND started IS NOT NULL",
            (since,),
        )[0]
        agents = {
            agent: {"nodes": n, "mean_s": mean, "passed": ok}
            for agent, n, mean, ok in self._read(
                "SELECT agent, COUNT(*), AVG(seconds), SUM(status = 'done') FROM nodes "
                "WHERE finished >= ? GROUP BY agent",
                (since,),
            )
        }
        return {
            "arrivals": arrivals,
            "first_arrival": first,
            "finished": finished,
            "service_s": service,
            "agents": agents,
        }

    def review_pairs(self, last: int) -> list[tuple[bool, bool]]:
        """The verdicts of the two reviewers on the ``last`` most recent reviewed changes."""
        rows = self._read(
            "SELECT first, second FROM reviews ORDER BY at DESC, job_id DESC LIMIT ?", (last,)
        )
        return [(bool(a), bool(b)) for a, b in rows]

    def pending(self) -> int:
        """Jobs queued or running (by any engine)."""
        return self._read("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')")[0][0]
