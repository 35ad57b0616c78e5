"""A night's process, start to end: serve the model, run the engine until the queue drains, stop.

:func:`run_night` takes the settings (:class:`~pantheon.core.run.settings.NightSettings`), has
the night put together by :func:`~pantheon.core.run.assemble.assembled` (the servers, their
clients, each agent's server and adapter, the engine), drains the queue with Ctrl-C and SIGTERM
wired to the engine's graceful and hard stops, tears everything down and returns a
:class:`NightResult`. ``pantheon night`` and ``pantheon engine`` both run through it. The
closing figures (the queue, the model's share, the pass rate per agent) are in the result and in
``night-figures.txt`` in the artifacts directory, where a console that started the night in its
own process reads them when it ends (:func:`read_closing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from pantheon.core.errors import PantheonError
from pantheon.core.observe.status import status_text
from pantheon.core.run.assemble import assembled
from pantheon.core.run.demo import agent_figures, night_figures
from pantheon.core.run.engine import Engine, EngineStats
from pantheon.core.run.nightlock import NightHolder, NightLock, host_cpu
from pantheon.core.run.settings import NightSettings, write_night_settings
from pantheon.core.store.atomic import atomic_write_text
from pantheon.core.store.layout import NIGHT_FIGURES_FILE
from pantheon.core.store.queue import JobQueue

__all__ = [
    "NightResult",
    "Stopper",
    "clear_closing",
    "closing_figures",
    "closing_path",
    "drive",
    "read_closing",
    "run_night",
    "write_closing",
]

log = logging.getLogger(__name__)


# -- the engine under the signals -------------------------------------------------------------


class Stopper:
    """Stops one engine: gracefully the first time (the nodes in flight finish), hard the
    second (they are cancelled, and resume next time). A stop asked for before the engine is
    built stops it as soon as it is."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine
        self.requested = False
        """A stop was asked for already: the next one is hard."""

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        if self.requested:
            engine.request_stop()

    def __call__(self) -> None:
        hard = self.requested
        self.requested = True
        if self.engine is not None:
            self.engine.request_stop(hard=hard)


async def drive(engine: Engine, stop: Stopper | None = None) -> EngineStats:
    """Run the engine with Ctrl-C / SIGTERM wired to ``stop`` (its graceful, then hard stop)."""
    stop = stop or Stopper(engine)
    stop.attach(engine)
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


@dataclass(frozen=True)
class NightResult:
    """How a night (or an engine) ended."""

    exit_code: int
    """0, 1 when a model server was lost, or the engine's own code."""
    reason: str | None
    """Why the night ended before its queue was empty (stopped, out of time, a full disk)."""
    repo: Path | None
    wall_s: float
    figures: str | None
    """The closing figures: the queue, the model's share and the pass rate per agent; None
    when they could not be read (``figures_problem`` says why), and for an engine."""
    figures_problem: PantheonError | None = None
    lost: tuple[PantheonError, ...] = ()
    """Why each model server that could not be kept running was lost."""

    @property
    def wall_line(self) -> str:
        line = f"wall time  {self.wall_s:.0f} s; the repository: {self.repo}"
        return line + (f"\nended early: {self.reason}" if self.reason else "")


def run_night(settings: NightSettings) -> NightResult:
    """Serve (or reach) the model servers, drain the queue, stop what was started. A night
    (``settings.role``) holds the artifacts, writes the settings it runs with in
    ``settings.json`` and its closing figures in ``night-figures.txt``; an engine that joins
    one holds nothing."""
    started = time.monotonic()
    artifacts = settings.artifacts
    lock = contextlib.nullcontext() if settings.join else NightLock(artifacts, settings.role)
    with lock, _cpu_of(settings):
        if settings.role == "night":
            try:
                write_night_settings(settings)
            except OSError as exc:
                log.warning("the night's settings are not saved: %s", exc)
        code, reason, lost = asyncio.run(_drain(settings))
    if settings.role != "night":
        return NightResult(
            code, reason, settings.repo, time.monotonic() - started, None, None, lost
        )
    figures: str | None = None
    problem: PantheonError | None = None
    try:
        figures = closing_figures(artifacts)
    except PantheonError as exc:
        problem = exc
    result = NightResult(
        exit_code=code,
        reason=reason,
        repo=settings.repo,
        wall_s=time.monotonic() - started,
        figures=figures,
        figures_problem=problem,
        lost=lost,
    )
    if figures is not None:
        try:
            write_closing(artifacts, f"{figures}\n{result.wall_line}")
        except OSError as exc:  # a full disk, say: the night's own code says what went wrong
            log.warning("the closing figures are not saved: %s", exc)
    return result


async def _drain(settings: NightSettings) -> tuple[int, str | None, tuple[PantheonError, ...]]:
    """The night put together (:func:`~pantheon.core.run.assemble.assembled`), driven under the
    signals until it ends; a lost model server stops it (exit code 1)."""
    stop = Stopper()
    async with assembled(settings, on_lost=lambda exc: stop()) as night:
        stats = await drive(night.engine, stop)
        lost = tuple(night.lost)
    return (1 if lost else stats.exit_code), stats.exit_reason, lost


def _cpu_of(settings: NightSettings) -> contextlib.AbstractContextManager[object]:
    """This host's CPU for the night's embedded servers: a night already serving on it is
    waited for (:func:`~pantheon.core.run.nightlock.host_cpu`), unless ``share_cpu``."""
    if settings.models.share_cpu or not settings.serves or settings.models.backend == "vllm":
        return contextlib.nullcontext()

    def waiting(holder: NightHolder | None) -> None:
        who = f"the {holder.line()} on {holder.artifacts}" if holder else "another night"
        log.warning(
            "%s serves its models on this host's CPU: this %s waits for it to end, "
            "rather than both starving on the same cores (--share-cpu runs both at once)",
            who,
            settings.role,
        )

    return host_cpu(settings.artifacts, on_wait=waiting, what=settings.role)


def closing_figures(artifacts: Path) -> str:
    """Where the night stands, the model's share of it and the pass rate per agent."""
    with JobQueue(artifacts) as queue:
        agents = agent_figures(queue)
    return "\n".join([status_text(artifacts), night_figures(artifacts), agents])


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
