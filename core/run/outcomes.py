"""What the engine does with a job that ended: it records it in the queue (a locked or full
database keeps it for the next tick), keeps a job that failed only for a full disk, and fails a
job the model server leaves unanswered too many times.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pantheon.core.errors import PantheonError, QueueError
from pantheon.core.ratelog import RepeatLog
from pantheon.core.run.runner import JobOutcome
from pantheon.core.store.diskspace import is_disk_full
from pantheon.core.store.layout import FAILED_FILE, run_path
from pantheon.core.store.queue import Job, JobQueue

if TYPE_CHECKING:
    from pantheon.core.model.client import LLMClient
    from pantheon.core.run.safety import Safeguards

__all__ = ["EngineStats", "ModelHealth", "Outcomes"]

log = logging.getLogger("pantheon.core.run.engine")


@dataclass
class EngineStats:
    """What one engine did."""

    done: int = 0
    failed: int = 0
    stopped: int = 0
    nodes_run: int = 0
    nodes_skipped: int = 0
    requeued_at_start: int = 0
    model_waits: int = 0
    """Ticks the engine held work back because the model server did not answer."""
    disk_pauses: int = 0
    """Times the night paused on a full disk."""
    exit_code: int = 0
    """What the command that ran the engine exits with: 0, or ``EXIT_DISK_FULL`` when an
    ``until_empty`` night stopped because its disk stayed full."""
    exit_reason: str | None = None
    """Why the engine stopped before the queue was empty, in one line."""
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class ModelHealth:
    """Whether the model server answers: the engine sends no work while it does not, and asks
    again every ``every_s`` seconds (an object the engine holds)."""

    def __init__(self, stats: EngineStats, *, every_s: float = 2.0) -> None:
        self.stats = stats
        self.every_s = every_s
        self.ok = False
        self.last = -1e9

    async def ready(self, llm: LLMClient | None) -> bool:
        """Health check before sending work; while the server is down, wait for it."""
        if llm is None:
            return True
        if self.ok and llm.down_since is None:
            return True
        now = time.monotonic()
        if now - self.last < self.every_s:
            return False
        self.last = now
        was_ok = self.ok
        self.ok = await llm.health()
        if self.ok and not was_ok:
            log.info("model server at %s answers; sending work", llm.where)
        elif not self.ok and (was_ok or self.stats.model_waits == 0):
            since = datetime.fromtimestamp(llm.down_since or time.time()).strftime("%H:%M:%S")
            log.warning(
                "waiting for the model server at %s (not answering since %s); no work is sent",
                llm.where,
                since,
            )
        if not self.ok:
            self.stats.model_waits += 1
        return self.ok


class Outcomes:
    """How the engine's jobs ended, noted and written to the queue: an object it holds."""

    def __init__(
        self,
        artifacts: Path,
        owner: str,
        stats: EngineStats,
        repeats: RepeatLog,
        safety: Safeguards,
        max_waits: int = 20,
    ) -> None:
        self.artifacts = artifacts
        self.owner = owner
        self.stats = stats
        self.repeats = repeats
        self.safety = safety
        self.max_waits = max_waits
        """A job the model server leaves unanswered this many times fails with the reason."""
        self.waits: dict[int, int] = {}
        self.unrecorded: list[tuple[Job, JobOutcome]] = []
        """Jobs that ended and are not in the queue yet (a locked or full database)."""

    def finish(self, job: Job, task: asyncio.Task[JobOutcome]) -> bool:
        """Note how a job ended (:meth:`record` writes it to the queue); True when it waits
        because the model server did not answer."""
        unanswered = False
        try:
            outcome = task.result()
        except asyncio.CancelledError:
            outcome = JobOutcome("stopped")
        except PantheonError as exc:
            outcome = JobOutcome("failed", error=f"{exc.title}: {exc}")
        except Exception as exc:  # one job's bug never stops the night
            if not is_disk_full(exc):
                log.exception("job %d (%s) crashed the runner", job.id, job.flow)
            outcome = JobOutcome("failed", error=f"runner error: {type(exc).__name__}: {exc}")
        if outcome.status == "failed" and self.safety.disk_trouble(outcome.error):
            outcome = self._kept_for_the_disk(outcome)
        self.stats.nodes_run += outcome.ran
        self.stats.nodes_skipped += outcome.skipped
        if outcome.status == "stopped" and outcome.error:
            # the model server did not answer: the job waits — unless it never gets an answer
            unanswered = True
            self.waits[job.id] = self.waits.get(job.id, 0) + 1
            if self.waits[job.id] >= self.max_waits:
                outcome.status = "failed"
                outcome.error = (
                    f"the model server did not answer this job in {self.max_waits} tries: "
                    f"{outcome.error.splitlines()[0]}"
                )
            else:
                self.repeats.warning(
                    "job waits", "job %d waits: %s", job.id, outcome.error.splitlines()[0]
                )
        self.unrecorded.append((job, outcome))
        return unanswered

    @staticmethod
    def _kept_for_the_disk(outcome: JobOutcome) -> JobOutcome:
        """A job that failed only because the disk had no room goes back to the queue: the
        nodes it finished stay finished, the one that could not be written runs again."""
        kept = [n for n in outcome.nodes if n.status == "done"]
        failed = next((n for n in outcome.nodes if n.status != "done"), None)
        return JobOutcome(
            "stopped",
            ran=outcome.ran,
            skipped=outcome.skipped,
            nodes=kept,
            next_agent=failed.agent if failed is not None else None,
        )

    def record(self, queue: JobQueue) -> None:
        """Write finished jobs to the queue; a locked or full database keeps them for the next
        tick instead of stopping the night."""
        while self.unrecorded:
            job, outcome = self.unrecorded[0]
            try:
                if outcome.status == "done":
                    queue.complete(job.id, self.owner, outcome.nodes, outcome.review)
                elif outcome.status == "failed":
                    queue.fail(
                        job.id, self.owner, outcome.error or "failed", outcome.nodes, outcome.review
                    )
                else:
                    queue.advance(job.id, outcome.nodes, next_agent=outcome.next_agent)
                    queue.release(self.owner, [job.id])
            except QueueError as exc:
                self.queue_trouble(exc)
                return
            self.unrecorded.pop(0)
            if outcome.status != "stopped":
                self.waits.pop(job.id, None)
            if outcome.status == "done":
                self.stats.done += 1
                log.debug("job %d %s done", job.id, job.run_name)
            elif outcome.status == "failed":
                self.stats.failed += 1
                log.warning(
                    "job %d failed: %s (see %s)",
                    job.id,
                    outcome.error,
                    run_path(self.artifacts, job.run_name) / FAILED_FILE,
                )
            else:
                self.stats.stopped += 1

    def queue_trouble(self, exc: QueueError) -> None:
        if not self.safety.disk_trouble(exc):
            self.repeats.warning(
                "queue", "the queue is not usable right now (%s); trying again", exc.message
            )
