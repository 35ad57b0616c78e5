"""A model server's life, in one place: start (or adopt), wait for health, supervise, stop.

The night, ``pantheon serve`` and the learn loop's judging all live through the same steps, so
they share them here:

- :func:`served` (async) starts or adopts one or more servers at once, waits until each is
  healthy, restarts one that dies while the block runs, and stops on the way out the ones this
  process started or adopted (unless ``keep``). A server that cannot be kept running is handed
  to ``on_lost`` (the night stops its engine).
- :func:`serving` (blocking) starts one server and stops it, whatever happens in between; the
  caller supervises it with :meth:`Supervisor.tick` if it runs long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

from pantheon.core.errors import PantheonError
from pantheon.core.model.server import ModelServer, ServerState

__all__ = ["Supervisor", "served", "serving"]

log = logging.getLogger(__name__)


class Supervisor:
    """Restart the servers that died; give up on one with the reason (its restarts ran out)."""

    def __init__(self, servers: Sequence[ModelServer]) -> None:
        self.servers = list(servers)

    def tick(self) -> None:
        """One look at each server: a dead one is started again (raises when it cannot be)."""
        for server in self.servers:
            server.restart_if_dead()

    async def watch(self, every_s: float, on_lost: Callable[[PantheonError], None] | None) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await asyncio.to_thread(self.tick)
            except PantheonError as exc:
                log.error("the model server cannot be kept running: %s", exc)
                if on_lost is not None:
                    on_lost(exc)
                return


@contextlib.asynccontextmanager
async def served(
    servers: Sequence[ModelServer],
    *,
    timeout_s: float = 180.0,
    tied: bool = True,
    keep: bool = False,
    supervise_every_s: float = 2.0,
    on_lost: Callable[[PantheonError], None] | None = None,
) -> AsyncIterator[list[ServerState]]:
    """The servers, healthy, for the block's time (their states, in order).

    They start at once (each in a thread); a cancel while they start (Ctrl-C) makes each give
    up and stop what it started. ``tied``: the servers die with this process; ``keep``: leave
    running, after the block, the ones this process started."""
    starting = [
        asyncio.ensure_future(asyncio.to_thread(s.ensure, timeout_s=timeout_s, tied=tied))
        for s in servers
    ]
    watch: asyncio.Task[None] | None = None
    try:
        states = list(await asyncio.shield(asyncio.gather(*starting)))
        watch = asyncio.create_task(Supervisor(servers).watch(supervise_every_s, on_lost))
        yield states
    finally:
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        for server in servers:
            server.abort_start()
        await asyncio.gather(*starting, return_exceptions=True)
        for server in servers:
            if server.started_here and not keep:
                await asyncio.to_thread(server.stop)


@contextlib.contextmanager
def serving(
    server: ModelServer,
    *,
    timeout_s: float = 180.0,
    supervisor_pid: int | None = None,
    tied: bool = True,
) -> Iterator[ServerState]:
    """Start ``server``, wait until it is healthy, and stop it when the block ends."""
    try:
        yield server.start(timeout_s=timeout_s, supervisor_pid=supervisor_pid, tied=tied)
    finally:
        server.stop()
