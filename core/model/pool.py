"""Many model servers behind one client: calls spread by outstanding requests, an agent kept on
its server, a dead server's calls sent to the others.

:class:`ServerPool` holds one :class:`~pantheon.core.model.client.LLMClient` per server and
looks like one client to the engine, the runner and the agents. A call goes to the server with
the fewest requests outstanding, except that an agent's calls stay on the server that took its
first one (its *home*: its adapter and its prompt prefix are warm there) for as long as that
server has no more than ``spill`` requests beyond the least loaded one. A server that stops
answering is left out of the choice; its call is posted to another server at once, and the
server is asked for its health every ``probe_s`` until it answers, then takes calls again.
Only when every server is down does a call wait, the way one client waits for its server.

Each member retries a failed post once before the pool moves on, so a dead server costs a call
about a second, not a member's whole backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pantheon.core.errors import ServerUnavailable
from pantheon.core.model.client import Backend, ChatReply, LLMClient

__all__ = ["RoutedClient", "ServerPool"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class ServerPool:
    """Several model servers of one backend and model, as one client."""

    def __init__(
        self,
        members: Sequence[LLMClient],
        *,
        spill: int = 2,
        probe_s: float = 5.0,
        rounds: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
    ) -> None:
        if not members:
            raise ValueError("a pool needs at least one server")
        kinds = {m.backend for m in members}
        if len(kinds) > 1:
            raise ValueError(
                "the servers of one pool must be of one backend, not "
                + ", ".join(sorted(str(k) for k in kinds))
            )
        self.members = list(members)
        self.spill = spill
        """How many more outstanding requests an agent's home server may have than the least
        loaded one before the agent's next call goes elsewhere."""
        self.probe_s = probe_s
        self.rounds = rounds
        """Times the whole pool is tried, with a backoff between, when every server is down."""
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.home: dict[str, LLMClient] = {}
        """Route key (an agent's name) -> the server its calls go to."""
        self.failovers = 0
        """Calls a dead server could not take that another one did."""
        self._probes: dict[int, asyncio.Task[bool]] = {}
        self._probed_at: dict[int, float] = {}
        self.model = self.members[0].model

    # -- what the engine reads of a client ------------------------------------------------------

    @property
    def backend(self) -> Backend:
        return self.members[0].backend

    @property
    def where(self) -> str:
        return ", ".join(m.where for m in self.members)

    @property
    def calls(self) -> dict[str, int]:
        """Generations answered, by server."""
        return {m.where: m.calls_answered for m in self.members}

    @property
    def in_flight(self) -> int:
        return sum(m.in_flight for m in self.members)

    @property
    def prompt_tokens_total(self) -> int:
        return sum(m.prompt_tokens_total for m in self.members)

    @property
    def completion_tokens_total(self) -> int:
        return sum(m.completion_tokens_total for m in self.members)

    @property
    def tokens_seen_total(self) -> int:
        return sum(m.tokens_seen_total for m in self.members)

    @property
    def cached_tokens_total(self) -> int:
        return sum(m.cached_tokens_total for m in self.members)

    @property
    def cache_counted_total(self) -> int:
        return sum(m.cache_counted_total for m in self.members)

    @property
    def max_choices(self) -> int | None:
        known = [m.max_choices for m in self.members if m.max_choices]
        return min(known) if known else None

    @property
    def adapters(self) -> dict[str, int]:
        """The adapters every server has loaded (an agent's may go to any of them)."""
        names = set(self.members[0].adapters)
        for m in self.members[1:]:
            names &= set(m.adapters)
        return {n: self.members[0].adapters[n] for n in sorted(names)}

    @property
    def down_since(self) -> float | None:
        """When the last server stopped answering; None while any answers."""
        downs = [m.down_since for m in self.members]
        if any(d is None for d in downs):
            return None
        return max(d for d in downs if d is not None)

    def up(self) -> list[LLMClient]:
        """The servers answering now (by the last call or health check)."""
        return [m for m in self.members if m.down_since is None]

    # -- routing --------------------------------------------------------------------------------

    def pick(self, key: str | None = None, *, avoid: Sequence[LLMClient] = ()) -> LLMClient:
        """The server the next call of ``key`` goes to."""
        self._probe_the_down()
        choices = [m for m in self.up() if m not in avoid]
        if not choices:
            choices = [m for m in self.members if m not in avoid] or list(self.members)
        least = min(choices, key=lambda m: (m.in_flight, self._homes_of(m)))
        home = self.home.get(key) if key is not None else None
        if home is not None and home in choices and home.in_flight <= least.in_flight + self.spill:
            return home
        if key is not None and (home is None or home not in choices):
            self.home[key] = least
        return least

    def _homes_of(self, member: LLMClient) -> int:
        return sum(1 for m in self.home.values() if m is member)

    def _probe_the_down(self) -> None:
        now = time.monotonic()
        for m in self.members:
            if m.down_since is None or id(m) in self._probes:
                continue
            if now - self._probed_at.get(id(m), 0.0) < self.probe_s:
                continue
            self._probed_at[id(m)] = now
            try:
                task = asyncio.get_running_loop().create_task(self._probe(m))
            except RuntimeError:  # no loop: the next call's routing probes
                return
            self._probes[id(m)] = task

    async def _probe(self, member: LLMClient) -> bool:
        try:
            ok = await member.health()
            if ok:
                log.info("model server at %s answers again; it takes calls", member.where)
            return ok
        finally:
            self._probes.pop(id(member), None)

    async def _routed(
        self, key: str | None, call: Callable[[LLMClient], Awaitable[T]], what: str
    ) -> T:
        delay = self.backoff_s
        last: ServerUnavailable | None = None
        for round_ in range(self.rounds + 1):
            tried: list[LLMClient] = []
            while len(tried) < len(self.members):
                member = self.pick(key, avoid=tried)
                tried.append(member)
                try:
                    result = await call(member)
                except ServerUnavailable as exc:
                    last = exc
                    if len(tried) < len(self.members):  # another server takes it now
                        log.warning(
                            "%s: model server at %s is not answering; posting to another",
                            what,
                            member.where,
                        )
                        self.failovers += 1
                    if key is not None and self.home.get(key) is member:
                        self.home.pop(key)
                    continue
                return result
            if round_ < self.rounds:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
        assert last is not None
        raise ServerUnavailable(
            f"none of the {len(self.members)} model servers answers ({self.where}); "
            f"last: {last.message}",
            hint="are they running? `pantheon serve --status` tells; `pantheon serve` starts one",
        )

    # -- calls ----------------------------------------------------------------------------------

    def routed(self, key: str | None) -> RoutedClient:
        """This pool as one agent's client: its calls go by ``key``'s home."""
        return RoutedClient(self, key)

    async def chat(
        self, messages: list[dict[str, Any]], *, route: str | None = None, **kw: Any
    ) -> ChatReply:
        return await self._routed(
            route, lambda m: m.chat(messages, **kw), kw.get("label", "model call")
        )

    async def chat_n(
        self, messages: list[dict[str, Any]], *, route: str | None = None, **kw: Any
    ) -> list[ChatReply]:
        return await self._routed(
            route, lambda m: m.chat_n(messages, **kw), kw.get("label", "model call")
        )

    async def count_tokens(self, text: str) -> int:
        return await self.pick().count_tokens(text)

    async def load_adapter_ids(self) -> dict[str, int]:
        await asyncio.gather(*(m.load_adapter_ids() for m in self.members))
        return self.adapters

    async def server_slots(self) -> int | None:
        """The slots of all the servers together (those that say)."""
        slots = await asyncio.gather(*(m.server_slots() for m in self.members))
        known = [s for s in slots if s]
        return sum(known) if known else None

    async def context_size(self) -> int | None:
        """The smallest context of the servers that say: a call may go to any of them."""
        sizes = await asyncio.gather(*(m.context_size() for m in self.members))
        known = [s for s in sizes if s]
        return min(known) if known else None

    async def health(self) -> bool:
        """True when any server is ready; asks every one."""
        oks = await asyncio.gather(*(m.health() for m in self.members))
        return any(oks)

    async def aclose(self) -> None:
        for task in list(self._probes.values()):
            task.cancel()
        await asyncio.gather(*(m.aclose() for m in self.members))

    async def __aenter__(self) -> ServerPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class RoutedClient:
    """A pool seen by one agent: everything a client has, with calls routed by its key."""

    def __init__(self, pool: ServerPool, key: str | None) -> None:
        self.pool = pool
        self.key = key

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)

    @property
    def where(self) -> str:
        """The server this agent's calls go to now."""
        return self.pool.pick(self.key).where

    def routed(self, key: str | None) -> RoutedClient:
        return RoutedClient(self.pool, key)

    async def chat(self, messages: list[dict[str, Any]], **kw: Any) -> ChatReply:
        return await self.pool.chat(messages, route=self.key, **kw)

    async def chat_n(self, messages: list[dict[str, Any]], **kw: Any) -> list[ChatReply]:
        return await self.pool.chat_n(messages, route=self.key, **kw)
