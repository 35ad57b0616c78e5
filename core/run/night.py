"""A night's process, start to end: serve the model, run the engine until the queue drains, stop.

:func:`run_night` takes the night's settings (:class:`NightSettings`), starts the embedded model
server (and the writers' second one), supervises them, builds the model clients, gives each agent
its server and its promoted adapter, drains the queue with Ctrl-C and SIGTERM wired to the
engine's graceful and hard stops, tears everything down and returns a :class:`NightResult`. The
closing figures (the queue, the model's share, the pass rate per agent) are in the result and in
``night-figures.txt`` in the artifacts directory, where a console that started the night in its
own process reads them when it ends (:func:`read_closing`).

:func:`drive` (the engine under the signals) serves ``pantheon engine`` too; the clients of the
model servers and the adapters each agent uses are in :mod:`~pantheon.core.run.connect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pantheon.core.agents.builtin import default_registry
from pantheon.core.errors import PantheonError
from pantheon.core.model.client import LLMClient
from pantheon.core.model.files import DEFAULT_MODEL
from pantheon.core.model.pool import ServerPool
from pantheon.core.model.turns import CpuTurns
from pantheon.core.observe.status import status_text
from pantheon.core.run.connect import Endpoint, adapter_files, adapters_in_use, connect, pool_of
from pantheon.core.run.deadline import Deadline
from pantheon.core.run.demo import agent_figures, night_figures
from pantheon.core.run.engine import Engine, EngineStats
from pantheon.core.run.nightlock import NightHolder, NightLock, host_cpu
from pantheon.core.store.atomic import atomic_write_text
from pantheon.core.store.control import ControlFile
from pantheon.core.store.layout import NIGHT_FIGURES_FILE
from pantheon.core.store.queue import JobQueue

if TYPE_CHECKING:
    from pantheon.core.model.server import ModelServer, Speculation

__all__ = [
    "DEFAULT_CODE_MODEL",
    "REVIEW_AGENTS",
    "WRITER_AGENTS",
    "Endpoint",
    "Gates",
    "NightResult",
    "NightSettings",
    "Stopper",
    "adapter_files",
    "adapters_in_use",
    "check_servable",
    "clear_closing",
    "closing_figures",
    "closing_path",
    "connect",
    "drive",
    "night_servers",
    "pool_of",
    "read_closing",
    "run_night",
    "write_closing",
]

log = logging.getLogger(__name__)

DEFAULT_CODE_MODEL = "qwen2.5-coder-1.5b"
"""The writers' model in a night (codegen, doc.frontmatter): bench/codefix.py measures it
against the 0.5B model, which stays the reviewers'."""
AUTO_SLOTS = 8
"""The slots of a night's embedded servers under ``--concurrency auto``: the most c it tries."""
SPLIT_MIN_CORES = 4
"""``--cpu-share auto`` splits the CPU between a night's two servers when each part would have
at least this many cores (below, each computes faster with all of them, in turns)."""
WRITER_AGENTS = ("codegen", "doc.frontmatter")
REVIEW_AGENTS = ("review.peer",)


@dataclass(frozen=True)
class Gates:
    """The reviewers' audits: κ and the canaries, and when they pause merges."""

    kappa_threshold: float = 0.6
    kappa_min_pairs: int = 20
    canary_every: int = 10
    """One in this many reviewed changes is planted again as a canary (0 or less: none)."""
    canary_min: int = 5
    canary_max_miss: float = 0.5

    def engine_kwargs(self) -> dict[str, Any]:
        return {
            "kappa_threshold": self.kappa_threshold,
            "kappa_min_pairs": self.kappa_min_pairs,
            "canary_every": max(self.canary_every, 0),
            "canary_min": self.canary_min,
            "canary_max_miss": self.canary_max_miss,
        }


# -- the engine under the signals -------------------------------------------------------------


class Stopper:
    """Stops one engine: gracefully the first time (the nodes in flight finish), hard the
    second (they are cancelled, and resume next time)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.requested = False
        """A stop was asked for already: the next one is hard."""

    def __call__(self) -> None:
        hard = self.requested
        self.requested = True
        self.engine.request_stop(hard=hard)


async def drive(engine: Engine, stop: Stopper | None = None) -> EngineStats:
    """Run the engine with Ctrl-C / SIGTERM wired to ``stop`` (its graceful, then hard stop)."""
    stop = stop or Stopper(engine)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal, stop, sig)
    try:
        stats = await engine.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info(
        "engine stopped: %d done, %d failed, %d given back; %d nodes run, %d resumed "
        "from disk, in %.1fs",
        stats.done,
        stats.failed,
        stats.stopped,
        stats.nodes_run,
        stats.nodes_skipped,
        stats.elapsed,
    )
    if stats.exit_reason:
        log.warning("%s (exit code %d)", stats.exit_reason, stats.exit_code)
    return stats


def _on_signal(stop: Stopper, sig: signal.Signals) -> None:
    log.warning(
        "%s: %s",
        sig.name,
        "cancelling the nodes in flight; they resume next time"
        if stop.requested
        else "stopping after the nodes in flight (again to cancel them)",
    )
    stop()


# -- the night ------------------------------------------------------------------------------


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class NightSettings:
    """What a night runs on; its queue is in ``artifacts`` already."""

    artifacts: Path
    repo: Path
    """The repository the night works on (said in its closing line)."""
    model: str = DEFAULT_MODEL
    """The embedded server's model (a catalog name or a file)."""
    code_model: str | None = None
    """The writers' model, on a second embedded server; None: they share ``model``'s."""
    endpoint: Endpoint = field(default_factory=Endpoint)
    """A server of the operator's: with ``endpoint.url``, nothing is served here."""
    gates: Gates = field(default_factory=Gates)
    reviewers_on: Literal["model", "code-model"] = "model"
    """Which server the reviewers ask, when there are two."""
    keep_server: bool = False
    """Leave the servers this night started running afterwards."""
    auto_concurrency: bool = False
    """``--concurrency auto``: the engine finds c from the throughput it measures at each c,
    up to the embedded servers' slots (:data:`AUTO_SLOTS`)."""
    backend: Literal["llama.cpp", "openvino", "vllm"] = "llama.cpp"
    """The embedded servers' kind (without ``endpoint.url``): llama.cpp's llama-server,
    Pantheon's own server over OpenVINO GenAI, or vLLM on a GPU host."""
    servers: int = 1
    """Embedded servers of ``model``: more than one are a pool, the calls spread over them
    (the CPU's cores shared out between them)."""
    speculative: Speculation = "ngram"
    """The embedded llama.cpp servers' n-gram speculation (:attr:`ServerConfig.speculative`)."""
    share_cpu: bool = False
    """Run even while another night serves its models on this host's CPU (both slower)."""
    until: datetime | None = None
    """``--until``: the time the night must be done by (:mod:`pantheon.core.run.deadline`)."""
    cpu_share: Literal["auto", "turns", "split"] = "auto"
    """How the embedded servers of two models (the writers' and the others') share this
    machine's CPU: ``turns`` — each gets every core and they compute one at a time
    (:class:`~pantheon.core.model.turns.CpuTurns`); ``split`` — each gets its part of the
    cores and they compute at once; ``auto`` — turns where a part would be under
    :data:`SPLIT_MIN_CORES` cores, split on a CPU with more."""

    @property
    def cpu_turns(self) -> bool:
        """Whether this night's embedded servers take turns on the CPU (see ``cpu_share``)."""
        if self.endpoint.url or not self.code_model or self.servers > 1:
            return False  # one server, or a pool of one model: its members split the cores
        if self.backend == "vllm" or self.cpu_share == "split":
            return False
        return self.cpu_share == "turns" or cores() // 2 < SPLIT_MIN_CORES


@dataclass(frozen=True)
class NightResult:
    """How a night ended."""

    exit_code: int
    """0, 1 when a model server was lost, or the engine's own code."""
    reason: str | None
    """Why the night ended before its queue was empty (stopped, out of time, a full disk)."""
    repo: Path
    wall_s: float
    figures: str | None
    """The closing figures: the queue, the model's share and the pass rate per agent; None
    when they could not be read (``figures_problem`` says why)."""
    figures_problem: PantheonError | None = None
    lost: tuple[PantheonError, ...] = ()
    """Why each model server that could not be kept running was lost."""

    @property
    def wall_line(self) -> str:
        line = f"wall time  {self.wall_s:.0f} s; the repository: {self.repo}"
        return line + (f"\nended early: {self.reason}" if self.reason else "")


def run_night(settings: NightSettings) -> NightResult:
    """Serve the model(s), drain the queue, stop what was started; the figures of the end
    are in the result and, when they could be read, in ``night-figures.txt``."""
    started = time.monotonic()
    lost: list[PantheonError] = []
    with NightLock(settings.artifacts, "night"), _cpu_of(settings):
        code, reason = asyncio.run(_serve_and_drain(settings, lost))
    figures: str | None = None
    problem: PantheonError | None = None
    try:
        figures = closing_figures(settings.artifacts)
    except PantheonError as exc:
        problem = exc
    result = NightResult(
        exit_code=code,
        reason=reason,
        repo=settings.repo,
        wall_s=time.monotonic() - started,
        figures=figures,
        figures_problem=problem,
        lost=tuple(lost),
    )
    if figures is not None:
        try:
            write_closing(settings.artifacts, f"{figures}\n{result.wall_line}")
        except OSError as exc:  # a full disk, say: the night's own code says what went wrong
            log.warning("the closing figures are not saved: %s", exc)
    return result


def _cpu_of(settings: NightSettings) -> contextlib.AbstractContextManager[object]:
    """This host's CPU for the night's embedded servers: a night already serving on it is
    waited for (:func:`~pantheon.core.run.nightlock.host_cpu`), unless ``share_cpu``."""
    if settings.share_cpu or settings.endpoint.url or settings.backend == "vllm":
        return contextlib.nullcontext()

    def waiting(holder: NightHolder | None) -> None:
        who = f"the {holder.line()} on {holder.artifacts}" if holder else "another night"
        log.warning(
            "%s serves its models on this host's CPU: this night waits for it to end, "
            "rather than both starving on the same cores (--share-cpu runs both at once)",
            who,
        )

    return host_cpu(settings.artifacts, on_wait=waiting)


def closing_figures(artifacts: Path) -> str:
    """Where the night stands, the model's share of it and the pass rate per agent."""
    with JobQueue(artifacts) as queue:
        agents = agent_figures(queue)
    return "\n".join([status_text(artifacts), night_figures(artifacts), agents])


def night_servers(
    settings: NightSettings, concurrency: int, *, announce: bool = True
) -> list[ModelServer]:
    """The embedded servers of the night: its model's, and the writers' when they have one."""
    from pantheon.core.model.server import ModelServer, ServerConfig

    if settings.endpoint.url:
        return []
    code_model = settings.code_model
    backend = settings.backend
    # servers on one CPU share its cores: each takes every core and they take turns, or each
    # takes its part; never every core each at once, or their spinning threads thrash (here
    # 0.3 generated tokens/s a stream with two, against 8 alone)
    count = settings.servers + (1 if code_model else 0)
    if count < 2:
        threads = None  # the server's own choice
    elif settings.cpu_turns:
        threads = cores()
    else:
        threads = max(1, cores() // count)

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
            parallel=max(concurrency, AUTO_SLOTS if settings.auto_concurrency else 1),
            threads=threads,
            adapters=adapters,
            speculative=settings.speculative,
        )

    servers = [ModelServer(settings.artifacts, config(settings.model))]
    servers += [
        ModelServer(settings.artifacts, config(settings.model), name=f"pool-{i}")
        for i in range(2, settings.servers + 1)
    ]
    if announce:
        many = f"{settings.servers} embedded model servers" if settings.servers > 1 else None
        log.info(
            "starting the %s (%s, %s)", many or "embedded model server", settings.model, backend
        )
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


async def _serve_and_drain(
    settings: NightSettings, lost: list[PantheonError]
) -> tuple[int, str | None]:
    from pantheon.core.model.lifecycle import served

    artifacts = settings.artifacts
    if settings.auto_concurrency:  # the tuner's first c, from the first job on
        ControlFile(artifacts).update(by="auto", concurrency=2)
    concurrency = ControlFile(artifacts).read().concurrency
    from pantheon.core.observe.tuning import ConcurrencyTuner

    engine = Engine(
        artifacts,
        default_registry(),
        until_empty=True,
        tuner=ConcurrencyTuner(start=concurrency) if settings.auto_concurrency else None,
        deadline=Deadline(settings.until) if settings.until is not None else None,
        **settings.gates.engine_kwargs(),
    )
    stop = Stopper(engine)

    def on_lost(exc: PantheonError) -> None:
        lost.append(exc)
        stop()

    servers = night_servers(settings, concurrency)
    keep = settings.keep_server
    clients: list[LLMClient | ServerPool] = []
    try:
        async with served(servers, tied=not keep, keep=keep, on_lost=on_lost) as states:
            # the model files the servers run (llama.cpp's adapters are tied to theirs)
            files = [Path(st.model_path) if st.backend == "llama.cpp" else None for st in states]
            main_file = None if settings.endpoint.url or not files else files[0]
            writers_file = files[-1] if settings.code_model and files else None
            if settings.endpoint.url:
                clients.append(connect(artifacts, settings.endpoint, required=True))
            if settings.servers > 1:
                for state in states[: settings.servers]:
                    log.info("model server ready at %s", state.endpoint)
                pool = pool_of(
                    [st.endpoint for st in states[: settings.servers]],
                    backend=states[0].backend,
                    model=states[0].alias,
                    **settings.endpoint.limits(),
                )
                for member, state in zip(pool.members, states, strict=False):
                    member.adapters = dict(state.adapters)
                    member.max_choices = state.parallel
                clients.append(pool)
                states = states[settings.servers :]
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
                    **settings.endpoint.limits(),
                )
                client.max_choices = state.parallel
                clients.append(client)
            if settings.cpu_turns:
                turns = CpuTurns()
                for client in clients:
                    if isinstance(client, LLMClient):
                        client.turns = turns
                log.info("the servers take turns on the CPU, each with all %d cores", cores())
            llm = engine.llm = clients[0]
            if len(clients) > 1:
                moved = WRITER_AGENTS + (
                    REVIEW_AGENTS if settings.reviewers_on == "code-model" else ()
                )
                engine.agent_llms = {agent: clients[1] for agent in moved}
            # each agent's promoted adapter, from the server that answers it
            moved_agents = set(engine.agent_llms)
            engine.adapters = await adapters_in_use(
                artifacts, llm, exclude=moved_agents, model=main_file
            )
            if moved_agents:
                engine.adapters.update(
                    await adapters_in_use(
                        artifacts, clients[1], only=moved_agents, model=writers_file
                    )
                )
            stats = await drive(engine, stop)
            return (1 if lost else stats.exit_code), stats.exit_reason
    finally:
        for client in clients:
            await client.aclose()


# -- the closing figures on disk -------------------------------------------------------------


def closing_path(artifacts: Path) -> Path:
    return Path(artifacts) / NIGHT_FIGURES_FILE


def write_closing(artifacts: Path, text: str) -> None:
    """What the night said at its end, for the console that started it."""
    atomic_write_text(closing_path(artifacts), text.rstrip() + "\n")


def read_closing(artifacts: Path) -> str | None:
    """The last night's closing text; None when it ended before it had one."""
    try:
        return closing_path(artifacts).read_text(encoding="utf-8", errors="replace").rstrip()
    except OSError:
        return None


def clear_closing(artifacts: Path) -> None:
    """Before a night starts: the previous night's figures never speak for it."""
    closing_path(artifacts).unlink(missing_ok=True)
