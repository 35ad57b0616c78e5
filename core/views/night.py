"""The night as a screen shows it: read incrementally from the artifacts directory, no UI.

:class:`NightView` keeps what a console needs — the jobs (from the queue database, the run
index), the controls, the last hour of metric samples — and updates it piece by piece when the
watcher (:mod:`pantheon.core.observe.watch`) says a part changed. :func:`load_run` (run.py) reads
one run's folder whole for a detail view; the table of runs is in table.py. Nothing here
writes to the artifacts directory, and nothing here raises over a corrupt file: what cannot be
read is returned as a problem to show.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pantheon.core.errors import ArtifactError, PantheonError
from pantheon.core.observe.engines import EngineBeat, read_beats
from pantheon.core.store.atomic import read_json
from pantheon.core.store.control import Control, ControlFile
from pantheon.core.store.jsonl import JsonlTail
from pantheon.core.store.layout import (
    ERROR_FILE,
    INPUT_FILE,
    OUTPUT_FILE,
    RUN_FILE,
    WAITING_FILE,
    metrics_path,
    run_path,
)
from pantheon.core.store.queue import STATUSES, JobQueue, JobSummary
from pantheon.core.store.queueurl import has_queue, queue_url
from pantheon.core.store.records import MetricsSample
from pantheon.core.store.runs import RunRecord
from pantheon.core.views.run import CallView, NodeView, RunView, flow_agents, load_run
from pantheon.core.views.table import RunFilter, RunOrder, table_jobs

__all__ = [
    "CallView",
    "MetricsTail",
    "NightView",
    "NodeView",
    "RunFilter",
    "RunView",
    "load_run",
    "table_jobs",
]

HOUR_S = 3600.0


class MetricsTail:
    """Reads ``metrics/engine.jsonl`` incrementally: the last hour first, then new lines only.

    A torn last line is kept until its newline arrives; a corrupt line is counted and skipped; a
    file that shrank (rotated, rewritten) is read again from its start (the JSONL rule of
    :mod:`pantheon.core.store.jsonl`).
    """

    def __init__(self, artifacts: Path, *, keep_s: float = HOUR_S, tail_bytes: int = 8 << 20):
        self.path = metrics_path(artifacts)
        self.keep_s = keep_s
        self.tail_bytes = tail_bytes
        self.samples: list[dict[str, Any]] = []
        self.corrupt = 0
        self._tail = JsonlTail(
            self.path, tail_bytes=tail_bytes, record=MetricsSample, check=_has_ts
        )

    def read(self) -> list[dict[str, Any]]:
        """The new samples since the last call (all of the last hour on the first call)."""
        new, bad = self._tail.read()
        if self._tail.restarted:
            self.samples.clear()
        self.corrupt += len(bad)
        self.samples.extend(new)
        if self.samples:
            horizon = self.samples[-1]["ts"] - self.keep_s
            if self.samples[0]["ts"] < horizon:
                self.samples = [s for s in self.samples if s["ts"] >= horizon]
        return new


def _has_ts(sample: dict[str, Any]) -> str | None:
    return None if isinstance(sample.get("ts"), int | float) else "has no time (ts)"


@dataclass
class NightView:
    """What the console shows of a night; call the ``refresh_*`` methods when a part changed.

    One thread at a time may call it (the caller serializes); its database connection may
    move between threads.
    """

    artifacts: Path
    jobs: dict[int, JobSummary] = field(default_factory=dict)
    control: Control = field(default_factory=Control)
    control_error: str | None = None
    queue_error: str | None = None
    """Why the queue database could not be read (the last good jobs stay shown)."""
    problems: dict[str, str] = field(default_factory=dict)
    """Run name -> why its ``run.json`` could not be read (checked when the job changes)."""
    in_flight: dict[int, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    """Running job id -> the (node, agent) pairs it runs now, from its run folder."""
    waiting: dict[int, float] = field(default_factory=dict)
    """Running job id -> since when (epoch seconds) it waits on a model call."""
    full_every_s: float = 600.0
    """A full read of the queue this often: a safety net, as every change a reader can see is
    stamped (``touched``); only a clock stepping back could hide one."""

    def __post_init__(self) -> None:
        self.artifacts = Path(self.artifacts)
        self._control_file = ControlFile(self.artifacts)
        self.metrics = MetricsTail(self.artifacts)
        self.order = RunOrder()
        self.totals: dict[str, int] = dict.fromkeys(STATUSES, 0)
        self._queue: JobQueue | None = None
        self._since: float | None = None
        self._last_full = 0.0
        self._flow_nodes: dict[str, list[tuple[str, str]]] = {}
        self.beats: list[EngineBeat] = []
        """The engines' heartbeats: this directory's files, and on a queue several hosts share,
        every host's kept in it."""
        self._kept_beats: list[EngineBeat] = []
        """The beats a shared queue kept at its last read (none for a queue of this host)."""

    @property
    def shared(self) -> bool:
        """Whether engines on other hosts share this queue (its changes raise no file event
        here: the console looks every second)."""
        return queue_url(self.artifacts) is not None

    # -- reading ----------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return has_queue(self.artifacts)

    @property
    def samples(self) -> list[dict[str, Any]]:
        return self.metrics.samples

    def refresh_all(self) -> set[int]:
        self.refresh_control()
        self.refresh_metrics()
        changed = self.refresh_jobs(full=True)
        self.refresh_beats()
        return changed

    def refresh_beats(self) -> list[EngineBeat]:
        """This directory's heartbeat files, with what a shared queue kept at its last read
        (an engine whose file is gone, a clean stop, is gone from them)."""
        self.beats = read_beats(self.artifacts, also=self._kept_beats)
        return self.beats

    def refresh_control(self) -> Control:
        self.control = self._control_file.read()
        self.control_error = self._control_file.error
        return self.control

    def refresh_metrics(self) -> list[dict[str, Any]]:
        try:
            return self.metrics.read()
        except OSError:
            return []

    def _open(self) -> JobQueue | None:
        if self._queue is None and self.exists:
            self._queue = JobQueue(self.artifacts, create=False, timeout_s=2.0, shared=True)
        return self._queue

    def refresh_jobs(self, *, full: bool = False) -> set[int]:
        """Read the jobs that may have changed; return the ids whose row changed.

        The run.json of each job that changed is checked, so a corrupt one shows as a problem.
        """
        now = time.time()
        full = full or self._since is None or now - self._last_full > self.full_every_s
        running = [i for i, j in self.jobs.items() if j.status == "running"] if not full else []
        try:
            queue = self._open()
            if queue is None:
                return set()
            rows = queue.summaries(changed_since=None if full else self._since, also=running)
        except PantheonError as exc:
            self.queue_error = exc.message
            self.close()
            return set()
        self.queue_error = None
        if getattr(queue, "hosts_share", False):
            with contextlib.suppress(PantheonError):
                self._kept_beats = read_beats(self.artifacts, queue)
                self.beats = self._kept_beats
        # slack for a transaction that committed while we read
        self._since = now - 5.0
        if full:
            self._last_full = now
        changed = set()
        for row in rows:
            old = self.jobs.get(row.id)
            if old != row:
                self.jobs[row.id] = row
                self.order.update(row)
                if old is not None:
                    self.totals[old.status] -= 1
                self.totals[row.status] += 1
                changed.add(row.id)
        started = {self.jobs[i].run_name for i in changed if self.jobs[i].status != "queued"}
        for name in self.check_runs(started):
            changed.add(int(name.rsplit("-", 1)[1]))
        return changed | self.refresh_in_flight()

    def check_runs(self, names: set[str] | frozenset[str]) -> set[str]:
        """Validate the ``run.json`` of these runs; return those whose problem changed."""
        changed = set()
        for name in names:
            path = run_path(self.artifacts, name) / RUN_FILE
            why = _run_problem(path)
            if self.problems.get(name) != why:
                changed.add(name)
                if why is None:
                    self.problems.pop(name, None)
                else:
                    self.problems[name] = why
        return changed

    def refresh_in_flight(self) -> set[int]:
        """Find the nodes each running job runs now; return the jobs whose nodes changed.

        The queue knows a job's nodes only when it stops, so this looks in the run's folder: a
        node that has its ``input.json`` but neither ``output.json`` nor ``error.txt`` runs now.
        A few stat calls per running job.
        """
        changed = set()
        running = {i: j for i, j in self.jobs.items() if j.status == "running"}
        for job_id in list(self.in_flight):
            if job_id not in running:
                del self.in_flight[job_id]
                self.waiting.pop(job_id, None)
                changed.add(job_id)
        for job_id, job in running.items():
            folder = run_path(self.artifacts, job.run_name)
            now = tuple(
                (node, agent)
                for node, agent in self._nodes_of(job.flow_sha)
                if _node_in_flight(folder / node)
            )
            since = min(
                (t for t in (_waiting_since(folder / node) for node, _ in now) if t is not None),
                default=None,
            )
            if self.in_flight.get(job_id) != now or self.waiting.get(job_id) != since:
                self.in_flight[job_id] = now
                if since is None:
                    self.waiting.pop(job_id, None)
                else:
                    self.waiting[job_id] = since
                changed.add(job_id)
        return changed

    def _nodes_of(self, flow_sha: str) -> list[tuple[str, str]]:
        nodes = self._flow_nodes.get(flow_sha)
        if not nodes:  # an empty answer (the database was busy) is asked again next time
            nodes = list(flow_agents(self.artifacts, flow_sha).items())
            if nodes:
                self._flow_nodes[flow_sha] = nodes
        return nodes

    def close(self) -> None:
        if self._queue is not None:
            self._queue.close()
            self._queue = None


def _node_in_flight(folder: Path) -> bool:
    return (
        (folder / INPUT_FILE).exists()
        and not (folder / OUTPUT_FILE).exists()
        and not (folder / ERROR_FILE).exists()
    )


def _waiting_since(folder: Path) -> float | None:
    """When the node's model call in flight was sent (its ``waiting.json``), if one is."""
    try:
        since = read_json(folder / WAITING_FILE).get("since")
    except (FileNotFoundError, ArtifactError, AttributeError):
        return None
    return float(since) if isinstance(since, int | float) else None


def _run_problem(path: Path) -> str | None:
    try:
        RunRecord.model_validate(read_json(path))
    except FileNotFoundError:
        return None  # not written yet
    except ArtifactError as exc:
        return exc.message
    except ValidationError as exc:
        return f"{path} does not fit {RUN_FILE}: {exc.errors()[0]['msg']}"
    return None
