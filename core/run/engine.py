"""The engine: drains the queue with bounded concurrency, headless.

Every tick it reads ``control.json`` (concurrency, queue paused), claims jobs up to the
concurrency — grouped by the agent they run next — and runs them. It renews its leases while
it works and takes back the jobs of engines that died. A graceful stop lets the nodes in flight
finish and gives the unfinished jobs back to the queue; a hard stop cancels them, and they resume
from their last finished node.

It fails safe when left alone: a ``control.json`` that cannot be used pauses the queue and merges
until it is fixed, and a full disk pauses the night (one ERROR line), stops the running jobs after
their node in flight with their data kept, and lets it go on by itself when there is room again
(one INFO line). A trouble that repeats is logged once, then once a minute with a count.

Its loop never waits on SQLite or the disk: every read and write of the queue (and the metrics
samples) runs on one I/O thread of the engine's, so another process holding the queue's write
lock, or a slow disk, holds up the queue's bookkeeping and not the model calls in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pantheon.core.agents.base import AgentRegistry
from pantheon.core.agents.builtin import default_registry
from pantheon.core.errors import EXIT_INTERRUPTED, ArtifactError, PantheonError, QueueError
from pantheon.core.model.client import LLMClient
from pantheon.core.observe.engines import Heartbeat
from pantheon.core.observe.metrics import MetricsSampler, PrometheusExporter
from pantheon.core.observe.tuning import ConcurrencyTuner
from pantheon.core.ratelog import RepeatLog
from pantheon.core.run.deadline import Deadline
from pantheon.core.run.outcomes import EngineStats, ModelHealth, Outcomes
from pantheon.core.run.runner import JobOutcome, Runner
from pantheon.core.run.safety import Safeguards
from pantheon.core.run.sampling import Sampling
from pantheon.core.store.control import ControlFile
from pantheon.core.store.diskspace import DEFAULT_MIN_FREE_BYTES, DiskGuard
from pantheon.core.store.queue import Job, JobQueue, new_owner
from pantheon.core.work.sandbox import code_jobs_pending, code_sandbox

__all__ = ["Engine", "EngineStats"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Engine:
    """Drains the queue of one artifacts directory. Its fail-safes (:attr:`safety`), its
    record of how jobs ended (:attr:`outcomes`) and its metrics (:attr:`sampling`) are objects
    it holds."""

    def __init__(
        self,
        artifacts: Path,
        registry: AgentRegistry | None = None,
        *,
        until_empty: bool = False,
        tick_s: float = 0.25,
        lease_s: float = 60.0,
        max_attempts: int = 3,
        fsync: bool = False,
        progress_every_s: float = 10.0,
        llm: LLMClient | None = None,
        health_every_s: float = 2.0,
        queue_timeout_s: float = 10.0,
        metrics_every_s: float | None = 2.0,
        metrics_port: int | None = None,
        kappa_threshold: float = 0.6,
        kappa_min_pairs: int = 20,
        kappa_window: int = 50,
        canary_every: int = 0,
        canary_min: int = 5,
        canary_max_miss: float = 0.5,
        grounding_min: float | None = None,
        adapters: dict[str, str] | None = None,
        agent_llms: dict[str, LLMClient] | None = None,
        disk_min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        disk_check_every_s: float = 5.0,
        disk_wait_s: float = 600.0,
        tuner: ConcurrencyTuner | None = None,
        deadline: Deadline | None = None,
        role: str = "engine",
        clone: Path | None = None,
    ) -> None:
        self.artifacts = Path(artifacts)
        self.registry = registry or default_registry()
        self.until_empty = until_empty
        self.tick_s = tick_s
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.fsync = fsync
        self.progress_every_s = progress_every_s
        self.llm = llm
        """The model server's client: the engine sends no work while it does not answer."""
        self.queue_timeout_s = queue_timeout_s
        """How long a queue write waits for a lock held elsewhere before this tick gives up."""
        self.metrics_every_s = metrics_every_s
        """Seconds between samples in metrics/engine.jsonl (None: no samples)."""
        self.metrics_port = metrics_port
        self.canary_every = canary_every
        """One in this many reviewed changes is also planted as a canary (0: none)."""
        self.grounding_min = grounding_min
        self.adapters: dict[str, str] = dict(adapters or {})
        """Agent name -> the promoted LoRA adapter its model calls use."""
        self.agent_llms: dict[str, LLMClient] = dict(agent_llms or {})
        """Agent name -> the model server its calls go to, where it is not ``llm``'s (a code
        model for ``codegen``, say)."""
        self.disk = DiskGuard(
            self.artifacts, min_free_bytes=disk_min_free_bytes, check_every_s=disk_check_every_s
        )
        """Pauses the night on a full disk, resumes it when there is room again."""
        self.disk_wait_s = disk_wait_s
        """How long an ``until_empty`` night waits for room on a full disk before it stops
        with ``EXIT_DISK_FULL``."""
        self.deadline = deadline
        """``--until``: no job starts that cannot finish by then, by the service time measured."""
        self._out_of_time = False
        self._repeats = RepeatLog(log)
        self.owner = new_owner()
        self.clone = clone
        """This host's clone of the jobs' repository (None: the path each job names)."""
        self.heartbeat = Heartbeat(self.artifacts, self.owner, role)
        """This engine's file in ARTIFACTS/engines/: who drains the queue, from where."""
        self.stats = EngineStats()
        self.health = ModelHealth(self.stats, every_s=health_every_s)
        """Whether the model server answers, asked now and then while it does not."""
        self.control = ControlFile(self.artifacts)
        self.safety = Safeguards(
            self.artifacts,
            self.control,
            self.disk,
            self.stats,
            self._repeats,
            kappa_threshold=kappa_threshold,
            kappa_min_pairs=kappa_min_pairs,
            canary_min=canary_min,
            canary_max_miss=canary_max_miss,
            request_stop=self.request_stop,
            hold_between_nodes=self._hold_between_nodes,
        )
        self.outcomes = Outcomes(self.artifacts, self.owner, self.stats, self._repeats, self.safety)
        self.sampling = Sampling(
            self.artifacts,
            self.control,
            self.disk,
            self.safety,
            self._repeats,
            every_s=metrics_every_s,
            tuner=tuner,
            clients=lambda: [self.llm, *self.agent_llms.values()],
            running=lambda: len(self._tasks),
            io=self.io,
        )
        self.kappa_window = kappa_window
        self._stopping = False
        self._hard = False
        self._tasks: dict[asyncio.Task[JobOutcome], Job] = {}
        self._wake: asyncio.Event | None = None
        self.queue: JobQueue | None = None
        self.runner: Runner | None = None
        self._io: ThreadPoolExecutor | None = None
        self._paused_logged = False
        self._renewed_at = self._progress_at = 0.0
        """When the loop last renewed its leases and last logged its progress (monotonic)."""

    # -- control from outside -----------------------------------------------------------------

    def request_stop(self, *, hard: bool = False) -> None:
        """Graceful the first time (finish the nodes in flight), hard the second (cancel them)."""
        if self._stopping and not hard:
            hard = True
        self._stopping = True
        if self.runner is not None:
            self.runner.stop_between_nodes = True
        if hard and not self._hard:
            self._hard = True
            for task in self._tasks:
                task.cancel()
        if self._wake is not None:
            self._wake.set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    @property
    def last_sample(self) -> dict[str, Any] | None:
        """The last metrics sample taken."""
        return self.sampling.last_sample

    @property
    def exporter(self) -> PrometheusExporter | None:
        """The Prometheus endpoint, with ``metrics_port``."""
        return self.sampling.exporter

    @property
    def max_waits(self) -> int:
        """A job the model server leaves unanswered this many times fails with the reason."""
        return self.outcomes.max_waits

    @max_waits.setter
    def max_waits(self, value: int) -> None:
        self.outcomes.max_waits = value

    def _servers(self) -> list[str]:
        clients = {id(c): c for c in [self.llm, *self.agent_llms.values()] if c is not None}
        return [str(getattr(c, "where", "?")) for c in clients.values()]

    def _hold_between_nodes(self, disk_paused: bool) -> None:
        """The running jobs stop after their node in flight while the engine stops or the
        disk is full."""
        if self.runner is not None:
            self.runner.stop_between_nodes = self._stopping or disk_paused

    def _finish(self, task: asyncio.Task[JobOutcome]) -> None:
        job = self._tasks.pop(task)
        if self.outcomes.finish(job, task):
            self.health.ok = False  # the server did not answer it: ask its health again

    # -- the loop -----------------------------------------------------------------------------

    async def io(self, fn: Callable[..., T], /, *args: Any, **kw: Any) -> T:
        """``fn(*args, **kw)`` on the engine's I/O thread. One thread, so the queue's connection
        is used by one caller at a time, in order."""
        if self._io is None:
            self._io = ThreadPoolExecutor(1, thread_name_prefix="pantheon-engine-io")
        call = functools.partial(fn, *args, **kw)
        return await asyncio.get_running_loop().run_in_executor(self._io, call)

    async def run(self) -> EngineStats:
        try:
            return await self._run()
        finally:
            if self._io is not None:
                self._io.shutdown(wait=True)
                self._io = None

    async def _run(self) -> EngineStats:
        self._wake = asyncio.Event()
        opened = await self._open_queue()
        if opened is None:  # stopped while the disk was full
            self._repeats.flush()
            return self.stats
        queue = self.queue = opened
        self.runner = Runner(
            self.artifacts,
            self.registry,
            queue,
            fsync=self.fsync,
            llm=self.llm,
            adapters=self.adapters,
            agent_llms=self.agent_llms,
            canary_every=self.canary_every,
            on_canary=lambda: self.io(self.safety.canary_recorded),
            clone=self.clone,
            grounding_min=self.grounding_min,
        )
        self.runner.stop_between_nodes = self._stopping
        self.control.store = queue
        sampler: MetricsSampler | None = None
        try:
            await self.io(self.safety.disk_check)
            if await self.io(code_jobs_pending, queue):
                code_sandbox()  # one clear line, unless --no-sandbox (PANTHEON_SANDBOX=off)
            try:
                await self.io(self.control.ensure)
            except ArtifactError as exc:  # a full disk waits for room; anything else is fatal
                if not self.safety.disk_trouble(exc):
                    raise
            try:
                requeued, abandoned = await self.io(
                    queue.requeue_orphans, max_attempts=self.max_attempts
                )
            except QueueError as exc:  # a lock held elsewhere: the loop tries again later
                self.outcomes.queue_trouble(exc)
                requeued = abandoned = 0
            self.stats.requeued_at_start = requeued
            if requeued or abandoned:
                log.info(
                    "took back %d job(s) of an engine that stopped; %d abandoned after %d attempts",
                    requeued,
                    abandoned,
                    self.max_attempts,
                )
            if self.metrics_every_s:
                sampler = MetricsSampler(
                    queue,
                    llm=self.llm,
                    others=list(self.agent_llms.values()),
                    kappa_window=self.kappa_window,
                    artifacts=self.artifacts,
                )
                if self.metrics_port is not None:
                    exporter = self.sampling.exporter = PrometheusExporter(self.metrics_port)
                    log.info("engine metrics at http://127.0.0.1:%d/metrics", exporter.port)
            metrics = asyncio.create_task(self.sampling.loop(sampler)) if sampler else None
            try:
                await self._loop(queue)
            finally:
                if metrics is not None:
                    metrics.cancel()
                    await asyncio.gather(metrics, return_exceptions=True)
        finally:
            await self._shutdown(queue)
            if sampler is not None:
                await self.io(self.sampling.take, sampler)
            if self.sampling.exporter is not None:
                self.sampling.exporter.close()
            self._repeats.flush()
            await self.io(self.heartbeat.stop, queue)
            await self.io(queue.close)
        return self.stats

    async def _open_queue(self) -> JobQueue | None:
        """The queue; on a full disk (SQLite cannot even make its shared-memory file) wait for
        room. None when the engine was stopped, or an ``until_empty`` night gave up, first."""
        assert self._wake is not None
        while True:
            try:
                return await self.io(
                    JobQueue, self.artifacts, timeout_s=self.queue_timeout_s, shared=True
                )
            except QueueError as exc:
                if not self.safety.disk_trouble(exc):
                    raise
            while self.safety.disk_check():
                if self._stopping:
                    return None
                if self.until_empty and self.disk.paused_for() >= self.disk_wait_s:
                    self.safety.give_up_on_the_disk()
                    return None
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(self.disk.check_every_s, 1.0))

    async def _loop(self, queue: JobQueue) -> None:
        assert self._wake is not None and self.runner is not None
        self._renewed_at = self._progress_at = time.monotonic()
        while not self._stopping:
            ids = [j.id for j in self._tasks.values()]
            free = await self.io(self._tick, queue, ids)
            if free is None:
                break
            if free > 0 and await self._model_ready():
                await self._claim(queue, free)
            if self._tasks:
                done, _ = await asyncio.wait(
                    self._tasks, timeout=self.tick_s, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    if self.deadline is not None:
                        self.deadline.finished(self._tasks[task].id)
                    self._finish(task)
                if done:
                    await self.io(self.outcomes.record, queue)
            else:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.tick_s)

    def _tick(self, queue: JobQueue, running: list[int]) -> int | None:
        """The queue's side of one tick, on the I/O thread: the controls, the disk, what
        finished, the leases. Returns how many jobs to claim now; None ends the loop."""
        control = self.control.read()
        if getattr(queue, "hosts_share", False) and self.control.error is None:
            with contextlib.suppress(PantheonError):  # the queue's trouble is said below
                control = self.control.sync_pauses(queue, control)
        disk_full = self.safety.disk_check()
        free = 0
        try:
            self.outcomes.record(queue)
            if not disk_full:
                self.control.remember()  # the last good controls, kept in the queue
            if disk_full:
                if self.until_empty and self.disk.paused_for() >= self.disk_wait_s:
                    self.safety.give_up_on_the_disk()
                    return None
            elif control.queue_paused:
                if not self._paused_logged and self.control.error is None:
                    # (a control.json that cannot be used said so itself, as an error)
                    log.info(
                        "queue paused%s",
                        f": {control.queue_paused_reason}" if control.queue_paused_reason else "",
                    )
                self._paused_logged = True
            else:
                self._paused_logged = False
                free = control.concurrency - len(running)
            if free > 0 and self.deadline is not None and not self.deadline.allows():
                free = 0
                if not self._out_of_time:
                    log.info("no job starts any more: %s", self.deadline.why(queue.pending()))
                self._out_of_time = True
            now = time.monotonic()
            if now - self._renewed_at > self.lease_s / 3:
                queue.renew(self.owner, running, lease_s=self.lease_s)
                queue.requeue_orphans(max_attempts=self.max_attempts)
                self._renewed_at = now
            if not disk_full:
                stats = self.stats
                self.heartbeat.beat(running, self._servers(), stats.done, stats.failed, queue)
            if now - self._progress_at > self.progress_every_s and not disk_full:
                self._log_progress(queue)
                self._progress_at = now
            idle = not running and not self.outcomes.unrecorded
            if self.until_empty and idle and queue.pending() == 0:
                return None
            if idle and self._out_of_time and self.deadline is not None:
                self.stats.exit_reason = self.deadline.why(queue.pending())
                return None
        except QueueError as exc:
            self.outcomes.queue_trouble(exc)
        else:
            self._repeats.done("queue")
        return free

    async def _claim(self, queue: JobQueue, free: int) -> None:
        assert self.runner is not None
        busy = Counter(self.runner.current.values())
        prefer = [agent for agent, _ in busy.most_common()]
        try:
            jobs = await self.io(self._claim_jobs, queue, free, prefer)
        except QueueError as exc:
            self.outcomes.queue_trouble(exc)
            return
        for job in jobs:
            self.runner.current[job.id] = job.next_agent
            task = asyncio.create_task(self.runner.run(job), name=f"job-{job.id}")
            self._tasks[task] = job
            if self.deadline is not None:
                self.deadline.started(job.id)

    def _claim_jobs(self, queue: JobQueue, free: int, prefer: list[str]) -> list[Job]:
        assert self.runner is not None
        jobs = queue.claim(free, self.owner, lease_s=self.lease_s, prefer=prefer)
        for job in jobs:  # each job's flow is read here, not on the loop
            with contextlib.suppress(PantheonError):
                self.runner.flow_for(job)
        return jobs

    async def _model_ready(self) -> bool:
        """Health check before sending work; while the server is down, wait for it."""
        return await self.health.ready(self.llm)

    def _log_progress(self, queue: JobQueue) -> None:
        total = queue.counts().total
        rate = (self.stats.done + self.stats.failed) / max(self.stats.elapsed, 1e-9)
        log.info(
            "queued %d  running %d  done %d  failed %d  (%.1f jobs/s by this engine)",
            total["queued"],
            total["running"],
            total["done"],
            total["failed"],
            rate,
        )

    async def _shutdown(self, queue: JobQueue) -> None:
        if self._tasks:
            if not self._hard:
                log.info("stopping: letting %d job(s) finish their current node", len(self._tasks))
            done, _ = await asyncio.wait(self._tasks)
            for task in done:
                self._finish(task)
        await self.io(self.outcomes.record, queue)
        released = 0
        try:
            released = await self.io(queue.release, self.owner)
        except QueueError as exc:
            log.warning(
                "could not give the unfinished jobs back (%s); the next engine takes them back "
                "when their lease runs out",
                exc.message,
            )
        if self.outcomes.unrecorded:
            log.warning(
                "%d finished job(s) could not be recorded; they run again from their last "
                "node next time",
                len(self.outcomes.unrecorded),
            )
        if released:
            log.info("gave %d unfinished job(s) back to the queue", released)
        if self._stopping and self.until_empty and not self.stats.exit_code:
            with contextlib.suppress(QueueError):
                left = await self.io(queue.pending)
                if left:
                    self.stats.exit_code = EXIT_INTERRUPTED
                    self.stats.exit_reason = (
                        f"stopped before the queue was empty: {left} job(s) left, they resume "
                        "next time"
                    )
