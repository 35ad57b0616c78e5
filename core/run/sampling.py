"""The engine's metrics (an object :class:`~pantheon.core.run.engine.Engine` holds): a sample
every few seconds, written to ``metrics/engine.jsonl`` and exported, the reviewers' agreement
and canary scores checked on it, and ``--concurrency auto`` stepped by it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pantheon.core.errors import PantheonError
from pantheon.core.model.client import LLMClient
from pantheon.core.observe.metrics import MetricsSampler, PrometheusExporter, write_sample
from pantheon.core.observe.tuning import ConcurrencyTuner
from pantheon.core.ratelog import RepeatLog
from pantheon.core.store.control import ControlFile
from pantheon.core.store.diskspace import DiskGuard

if TYPE_CHECKING:
    from pantheon.core.run.safety import Safeguards

__all__ = ["Sampling"]

log = logging.getLogger("pantheon.core.run.engine")


class Sampling:
    """The engine's metrics, an object it holds: a sample every few seconds, written, exported,
    the reviewers' audits checked on it, and ``--concurrency auto`` stepped by it."""

    def __init__(
        self,
        artifacts: Path,
        control: ControlFile,
        disk: DiskGuard,
        safety: Safeguards,
        repeats: RepeatLog,
        *,
        every_s: float | None,
        tuner: ConcurrencyTuner | None,
        clients: Callable[[], list[LLMClient | None]],
        running: Callable[[], int],
        io: Callable[..., Awaitable[Any]],
    ) -> None:
        self.artifacts = artifacts
        self.control = control
        self.disk = disk
        self.safety = safety
        self.repeats = repeats
        self.every_s = every_s
        self.tuner = tuner
        self.clients = clients
        """The model clients whose generated tokens the tuner counts."""
        self.running = running
        """How many jobs the engine runs now."""
        self.io = io
        self.exporter: PrometheusExporter | None = None
        self.last_sample: dict[str, Any] | None = None
        self.was_busy = False

    async def loop(self, sampler: MetricsSampler) -> None:
        every = float(self.every_s or 2.0)
        next_at = time.monotonic() + every
        while True:
            await sampler.poll()
            if time.monotonic() >= next_at:
                await self.io(self.take, sampler)
                next_at = max(next_at + every, time.monotonic())
            await asyncio.sleep(min(0.5, every / 4))

    def take(self, sampler: MetricsSampler) -> None:
        """One sample: written to engine.jsonl, exported, and κ checked (none on a full disk)."""
        if self.disk.paused:
            return
        try:
            control = self.control.read()
            sample = sampler.sample(
                concurrency=control.concurrency, merges_paused=control.merges_paused
            )
            self.safety.check_agreement(sample, control.merges_paused)
            self.safety.check_canaries(sample, bool(sample.get("merges_paused")))
            if self.tuner is not None:
                sample["tuning"] = self._tune(sampler, sample, control.concurrency)
            write_sample(self.artifacts, sample)
        except PantheonError as exc:  # a sample is never worth stopping the night for
            if not self.safety.disk_trouble(exc):
                self.repeats.warning("metrics", "metrics sample skipped: %s", exc)
            return
        self.repeats.done("metrics")
        self.last_sample = sample
        if self.exporter is not None:
            self.exporter.update(sample)

    def _tune(self, sampler: MetricsSampler, sample: dict[str, Any], c: int) -> dict[str, Any]:
        """One step of ``--concurrency auto``: the throughput at c while every worker was busy;
        the c it asks for is written to control.json (by ``auto``)."""
        tuner = self.tuner
        assert tuner is not None
        if tuner.ceiling is None and sampler.slots:
            tuner.ceiling = sampler.slots
        busy = self.running() == c  # (more: the jobs of a higher c still finishing)
        clients = {id(x): x for x in self.clients() if x is not None}
        before = tuner.phase
        new = tuner.step(
            time.monotonic(),
            concurrency=c,
            tokens=sum(x.tokens_seen_total for x in clients.values()),
            jobs=int(sample.get("done") or 0) + int(sample.get("failed") or 0),
            busy=busy and self.was_busy,
        )
        self.was_busy = busy
        if new is not None:
            self.control.update(by="auto", concurrency=new)
            log.info("concurrency auto: c=%d (%s)", new, tuner.note)
        elif tuner.phase != before:
            log.info("concurrency auto: %s", tuner.note)
        return tuner.figures()
