"""One way to put a night together, for ``pantheon night`` and ``pantheon engine`` alike: the
model servers served here (or the operator's, or the one ``pantheon serve`` runs), a client for
each, every agent given its server and its promoted adapter, and the :class:`Engine` built from
the settings, whole, in one call.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pantheon.core.agents.builtin import default_registry
from pantheon.core.errors import PantheonError
from pantheon.core.model.client import LLMClient
from pantheon.core.model.pool import ServerPool
from pantheon.core.model.turns import CpuTurns
from pantheon.core.run.connect import adapter_files, adapters_in_use, connect, pool_of
from pantheon.core.run.deadline import Deadline
from pantheon.core.run.engine import Engine
from pantheon.core.run.settings import NightSettings
from pantheon.core.store.control import ControlFile

if TYPE_CHECKING:
    from pantheon.core.model.server import ModelServer, ServerState

__all__ = [
    "AUTO_SLOTS",
    "REVIEW_AGENTS",
    "SPLIT_MIN_CORES",
    "WRITER_AGENTS",
    "Assembled",
    "assembled",
    "check_servable",
    "cores",
    "cpu_turns",
    "night_servers",
]

log = logging.getLogger("pantheon.core.run.night")

AUTO_SLOTS = 8
"""The slots of a night's embedded servers under ``--concurrency auto``: the most c it tries."""
SPLIT_MIN_CORES = 4
"""``--cpu-share auto`` splits the CPU between a night's two servers when each part would have
at least this many cores (below, each computes faster with all of them, in turns)."""
WRITER_AGENTS = ("codegen", "doc.frontmatter")
REVIEW_AGENTS = ("review.peer",)

Client = LLMClient | ServerPool


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_turns(settings: NightSettings) -> bool:
    """Whether this night's embedded servers take turns on the CPU (see ``cpu_share``)."""
    models = settings.models
    if not settings.serves or not settings.writers_model or models.servers > 1:
        return False  # one server, or a pool of one model: its members split the cores
    if models.backend == "vllm" or models.cpu_share == "split":
        return False
    return models.cpu_share == "turns" or cores() // 2 < SPLIT_MIN_CORES


def night_servers(
    settings: NightSettings, concurrency: int, *, announce: bool = True
) -> list[ModelServer]:
    """The embedded servers of the night: its model's, and the writers' when they have one."""
    from pantheon.core.model.server import ModelServer, ServerConfig

    if not settings.serves:
        return []
    models = settings.models
    code_model = settings.writers_model
    backend = models.backend
    # servers on one CPU share its cores: each takes every core and they take turns, or each
    # takes its part; never every core each at once, or their spinning threads thrash (here
    # 0.3 generated tokens/s a stream with two, against 8 alone)
    count = models.servers + (1 if code_model else 0)
    if count < 2:
        threads = None  # the server's own choice
    elif cpu_turns(settings):
        threads = cores()
    else:
        threads = max(1, cores() // count)
    auto = settings.drain.concurrency == "auto"

    def config(model: str) -> ServerConfig:
        adapters = adapter_files(
            settings.artifacts, "vllm" if backend == "vllm" else "llama.cpp", model
        )
        if backend == "openvino" and adapters:
            if announce:
                from pantheon.core.model.ovserve import not_served

                log.warning("%s", not_served(adapters, "this night's calls"))
            adapters = []
        return ServerConfig(
            backend=backend,
            model=model,
            port=0,
            parallel=max(concurrency, AUTO_SLOTS if auto else 1),
            threads=threads,
            adapters=adapters,
            speculative=models.speculative,
        )

    servers = [ModelServer(settings.artifacts, config(models.model))]
    servers += [
        ModelServer(settings.artifacts, config(models.model), name=f"pool-{i}")
        for i in range(2, models.servers + 1)
    ]
    if announce:
        many = f"{models.servers} embedded model servers" if models.servers > 1 else None
        log.info("starting the %s (%s, %s)", many or "embedded model server", models.model, backend)
    if code_model:
        servers.append(ModelServer(settings.artifacts, config(code_model), name="code"))
        if announce:
            log.info("starting the writers' model server (%s, %s)", code_model, backend)
    return servers


def check_servable(settings: NightSettings) -> None:
    """Refuse, before anything starts, a night whose servers could not start: a model file
    its backend cannot read (OpenVINO's GGUF reader takes fewer tensor types than llama.cpp),
    a backend that is not installed. Raises ModelServerError with the reason."""
    for server in night_servers(settings, 1, announce=False):
        server.command(server.model_path())


@dataclass
class Assembled:
    """A night put together: its engine, and what it holds open until the night ends."""

    engine: Engine
    clients: list[Client] = field(default_factory=list)
    lost: list[PantheonError] = field(default_factory=list)
    """Why each model server that could not be kept running was lost."""


def _concurrency(settings: NightSettings) -> int:
    """c at the start: ``auto`` starts the tuner at 2; a number is the operator's; else
    control.json's."""
    control = ControlFile(settings.artifacts)
    wanted = settings.drain.concurrency
    if settings.join:
        return control.read().concurrency  # the night it joins sets c (and tunes it)
    if wanted == "auto":
        control.update(by="auto", concurrency=2)
    elif isinstance(wanted, int):
        control.update(by=f"pantheon {settings.role}", concurrency=wanted)
    return control.read().concurrency


@contextlib.asynccontextmanager
async def assembled(
    settings: NightSettings, on_lost: Callable[[PantheonError], None] | None = None
) -> AsyncIterator[Assembled]:
    """The night's servers served (or reached), its clients made, its engine built; all of it
    torn down on the way out. ``on_lost(exc)`` is called when a served model server is lost
    for good (the night stops: see :func:`~pantheon.core.run.night.run_night`)."""
    from pantheon.core.model.lifecycle import served
    from pantheon.core.observe.tuning import ConcurrencyTuner

    concurrency = _concurrency(settings)
    servers = night_servers(settings, concurrency)
    keep = settings.models.keep_server
    lost: list[PantheonError] = []

    def lost_one(exc: PantheonError) -> None:
        lost.append(exc)
        if on_lost is not None:
            on_lost(exc)

    clients: list[Client] = []
    try:
        async with served(servers, tied=not keep, keep=keep, on_lost=lost_one) as states:
            clients = _clients(settings, list(states))
            llm = clients[0] if clients else None
            agent_llms: dict[str, Client] = {}
            if len(clients) > 1:
                moved = WRITER_AGENTS + (
                    REVIEW_AGENTS if settings.models.reviewers_on == "code-model" else ()
                )
                agent_llms = {agent: clients[1] for agent in moved}
            adapters = await _adapters(settings, llm, agent_llms, states)
            drain = settings.drain
            tuned = drain.concurrency == "auto" and not settings.join
            engine = Engine(
                settings.artifacts,
                default_registry(),
                until_empty=drain.until_empty,
                tick_s=drain.tick_s,
                lease_s=drain.lease_s,
                fsync=drain.fsync,
                llm=llm,
                metrics_every_s=drain.metrics_every_s,
                metrics_port=drain.metrics_port,
                adapters=adapters,
                agent_llms=agent_llms,
                tuner=ConcurrencyTuner(start=concurrency) if tuned else None,
                deadline=Deadline(drain.until) if drain.until is not None else None,
                role=settings.role + (" (joined)" if settings.join else ""),
                clone=settings.work.repo if settings.role == "engine" else None,
                **settings.gates.engine_kwargs(),
            )
            yield Assembled(engine, clients, lost)
    finally:
        for client in clients:
            await client.aclose()


def _clients(settings: NightSettings, states: list[ServerState]) -> list[Client]:
    """A client for each server: the operator's (or ``pantheon serve``'s), a pool of the
    night's model, the writers'. The first answers every agent not moved to the second."""
    models = settings.models
    clients: list[Client] = []
    if not settings.serves:
        client = connect(settings.artifacts, settings.endpoint, required=settings.role == "night")
        return [client] if client is not None else []
    limits = settings.endpoint.limits()
    if models.servers > 1:
        for state in states[: models.servers]:
            log.info("model server ready at %s", state.endpoint)
        pool = pool_of(
            [st.endpoint for st in states[: models.servers]],
            backend=states[0].backend,
            model=states[0].alias,
            **limits,
        )
        for member, state in zip(pool.members, states, strict=False):
            member.adapters = dict(state.adapters)
            member.max_choices = state.parallel
        clients.append(pool)
        states = states[models.servers :]
    labels = ("model server", "writers' model server")
    if len(clients) == 1:
        labels = labels[1:]
    for state, label in zip(states, labels, strict=False):
        log.info("%s ready at %s", label, state.endpoint)
        client = LLMClient(
            state.endpoint,
            backend=state.backend,
            model=state.alias,
            adapters=state.adapters if not clients else None,
            **limits,
        )
        client.max_choices = state.parallel
        clients.append(client)
    if cpu_turns(settings):
        turns = CpuTurns()
        for one in clients:
            if isinstance(one, LLMClient):
                one.turns = turns
        log.info("the servers take turns on the CPU, each with all %d cores", cores())
    return clients


async def _adapters(
    settings: NightSettings,
    llm: Client | None,
    agent_llms: dict[str, Client],
    states: list[ServerState],
) -> dict[str, str]:
    """Each agent's promoted adapter, from the server that answers it (llama.cpp's adapters
    are tied to the model file it serves)."""
    files = [Path(st.model_path) if st.backend == "llama.cpp" else None for st in states]
    main_file = files[0] if settings.serves and files else None
    writers_file = files[-1] if settings.writers_model and files else None
    moved = set(agent_llms)
    adapters = await adapters_in_use(settings.artifacts, llm, exclude=moved, model=main_file)
    if moved:
        writers = next(iter(agent_llms.values()))
        adapters.update(
            await adapters_in_use(settings.artifacts, writers, only=moved, model=writers_file)
        )
    return adapters
