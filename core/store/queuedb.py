"""The queue's SQLite file, ``artifacts/pantheon.db``: its schema, the migration from older
versions, the connection (WAL mode) and the one translation of SQLite's errors into
:class:`~pantheon.core.errors.QueueError`. The jobs and what is done with them are in queue.py.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from pantheon.core.errors import QueueError
from pantheon.core.store.layout import DB_FILE

__all__ = ["DB_FILE", "SCHEMA_VERSION", "SQL_NOW", "QueueDatabase"]

SCHEMA_VERSION = 4

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
SQL_NOW = "(julianday('now') - 2440587.5) * 86400.0"
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


class QueueDatabase:
    """The connection to ``artifacts/pantheon.db``, brought to this schema. One per thread."""

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
