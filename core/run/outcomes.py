"""What the engine does with a job that ended: it records it in the queue (a locked or full
database keeps it for the next tick), keeps a job that failed only for a full disk, and fails a
job the model server leaves unanswered too many times.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pantheon.core.errors import PantheonError, QueueError
from pantheon.core.ratelog import RepeatLog
from pantheon.core.run.runner import JobOutcome
from pantheon.core.store.diskspace import is_disk_full
from pantheon.core.store.layout import FAILED_FILE, run_path
from pantheon.core.store.queue import Job, JobQueue

if TYPE_CHECKING:
    from pantheon.core.run.engine import EngineStats

__all__ = ["EngineOutcomes"]

log = logging.getLogger("pantheon.core.run.engine")


class EngineOutcomes:
    """The recording half of :class:`~pantheon.core.run.engine.Engine` (a mixin)."""

    artifacts: Path
    owner: str
    stats: EngineStats
    max_waits: int
    _model_ok: bool
    _waits: dict[int, int]
    _unrecorded: list[tuple[Job, JobOutcome]]
    _tasks: dict[asyncio.Task[JobOutcome], Job]
    _repeats: RepeatLog
    # and the fail-safes' _disk_trouble()

    def _finish(self, task: asyncio.Task[JobOutcome]) -> None:
        """Note how a job ended; :meth:`_record` writes it to the queue."""
        job = self._tasks.pop(task)
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
        if outcome.status == "failed" and self._disk_trouble(outcome.error):
            outcome = self._kept_for_the_disk(outcome)
        self.stats.nodes_run += outcome.ran
        self.stats.nodes_skipped += outcome.skipped
        if outcome.status == "stopped" and outcome.error:
            # the model server did not answer: the job waits — unless it never gets an answer
            self._model_ok = False
            self._waits[job.id] = self._waits.get(job.id, 0) + 1
            if self._waits[job.id] >= self.max_waits:
                outcome.status = "failed"
                outcome.error = (
                    f"the model server did not answer this job in {self.max_waits} tries: "
                    f"{outcome.error.splitlines()[0]}"
                )
            else:
                self._repeats.warning(
                    "job waits", "job %d waits: %s", job.id, outcome.error.splitlines()[0]
                )
        self._unrecorded.append((job, outcome))

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

    def _record(self, queue: JobQueue) -> None:
        """Write finished jobs to the queue; a locked or full database keeps them for the next
        tick instead of stopping the night."""
        while self._unrecorded:
            job, outcome = self._unrecorded[0]
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
                self._queue_trouble(exc)
                return
            self._unrecorded.pop(0)
            if outcome.status != "stopped":
                self._waits.pop(job.id, None)
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

    def _queue_trouble(self, exc: QueueError) -> None:
        if not self._disk_trouble(exc):
            self._repeats.warning(
                "queue", "the queue is not usable right now (%s); trying again", exc.message
            )
