"""A throwaway PostgreSQL server on this host, for the tests and benchmarks of the shared
queue: Debian's binaries, a cluster in a temporary folder, on a free loopback port with trust
authentication, stopped and removed on the way out. Never for a real night: a real one is the
operator's own server (see the deployment page).

``initdb`` refuses to run as root: as root the server runs as the system user ``pantheon-pg``,
created when it is missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from pantheon.core.errors import QueueError

__all__ = [
    "PG_USER",
    "PostgresServer",
    "new_database",
    "postgres_binaries",
    "throwaway_postgres",
]

PG_USER = "pantheon-pg"


def postgres_binaries() -> str | None:
    """The folder of the newest PostgreSQL server's binaries installed here, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A server started here: its URL, and stop and start again (the same data, port)."""

    def __init__(self, bindir: str, as_user: list[str], base: str, port: int) -> None:
        self.bindir, self.as_user, self.base, self.port = bindir, as_user, base, port
        self.data = os.path.join(base, "data")
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def start(self) -> None:
        opts = (
            f"-k {self.base} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        subprocess.run(
            [*self.as_user, f"{self.bindir}/pg_ctl", "-D", self.data, "-l",
             f"{self.base}/log", "-w", "-t", "60", "-o", opts, "start"],
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self) -> None:
        subprocess.run(
            [*self.as_user, f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "immediate", "-w",
             "stop"],
            capture_output=True,
        )  # fmt: skip


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the duration (its ``url`` names the ``postgres`` database)."""
    bindir = postgres_binaries()
    if bindir is None:
        raise QueueError(
            "no PostgreSQL server binaries on this host", hint="apt-get install postgresql"
        )
    as_user: list[str] = []
    root = os.geteuid() == 0
    if root:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 PG_USER],
                check=True,
            )  # fmt: skip
        as_user = ["runuser", "-u", PG_USER, "--"]
    base = tempfile.mkdtemp(prefix="pgt-")  # short: the socket path has a limit
    if root:
        shutil.chown(base, PG_USER)
    server = PostgresServer(bindir, as_user, base, _free_port())
    try:
        subprocess.run(
            [*as_user, f"{bindir}/initdb", "-D", server.data, "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
            check=True, capture_output=True,
        )  # fmt: skip
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def new_database(server: str) -> str:
    """A fresh database on ``server``; its URL."""
    import psycopg

    name = f"t{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.rsplit("/", 1)[0] + f"/{name}"
