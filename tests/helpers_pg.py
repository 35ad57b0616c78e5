"""A real PostgreSQL server for the tests of the shared queue
(:func:`~pantheon.core.store.pgserver.throwaway_postgres`); without Debian's binaries
(``apt-get install postgresql``) or PgQueuer (the ``postgres`` extra) the tests that need one
are skipped, saying so."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from pantheon.core.store.pgserver import (
    PostgresServer,
    new_database,
    postgres_binaries,
    throwaway_postgres,
)

__all__ = ["PostgresServer", "new_database", "postgres_server"]


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    pytest.importorskip("pgqueuer", reason="the postgres extra is not installed")
    if postgres_binaries() is None:
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql)")
    with throwaway_postgres() as server:
        yield server
