"""The night as a screen shows it: read incrementally from the artifacts directory, no UI.

:class:`NightView` keeps what a console needs — the jobs (from the queue database, the run
index), the controls, the last hour of metric samples — and updates it piece by piece when the
watcher (:mod:`pantheon.core.observe.watch`) says a part changed. :func:`load_run` reads one
run's folder whole for a detail view. Nothing here writes to the artifacts directory, and
nothing here raises over a corrupt file: what cannot be read is returned as a problem to show.
"""

from __future__ import annotations

import bisect
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pantheon.core.errors import ArtifactError, PantheonError
from pantheon.core.observe.metrics import metrics_path
from pantheon.core.store.atomic import read_json
from pantheon.core.store.control import Control, ControlFile
from pantheon.core.store.queue import DB_FILE, STATUSES, JobQueue, JobSummary
from pantheon.core.store.runs import RUNS, WAITING_FILE, FailedRecord, RunRecord

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
    file that shrank (rotated, rewritten) is read again from its start.
    """

    def __init__(self, artifacts: Path, *, keep_s: float = HOUR_S, tail_bytes: int = 8 << 20):
        self.path = metrics_path(artifacts)
        self.keep_s = keep_s
        self.tail_bytes = tail_bytes
        self.samples: list[dict[str, Any]] = []
        self.corrupt = 0
        self._offset: int | None = None
        self._rest = b""
        self._inode: int | None = None

    def read(self) -> list[dict[str, Any]]:
        """The new samples since the last call (all of the last hour on the first call)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._offset, self._rest = None, b""
            return []
        if self._offset is not None and (st.st_size < self._offset or st.st_ino != self._inode):
            self._offset, self._rest = None, b""
            self.samples.clear()
        self._inode = st.st_ino
        start = self._offset
        if start is None:
            start = max(0, st.st_size - self.tail_bytes)
        if st.st_size == start:
            self._offset = start
            return []
        with open(self.path, "rb") as fh:
            fh.seek(start)
            data = fh.read(st.st_size - start)
        first_read = self._offset is None
        self._offset = start + len(data)
        data = self._rest + data
        lines = data.split(b"\n")
        self._rest = lines.pop()
        if first_read and start > 0 and lines:
            lines = lines[1:]  # began mid-line
        new: list[dict[str, Any]] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.corrupt += 1
                continue
            if isinstance(value, dict) and isinstance(value.get("ts"), int | float):
                new.append(value)
            else:
                self.corrupt += 1
        self.samples.extend(new)
        if self.samples:
            horizon = self.samples[-1]["ts"] - self.keep_s
            if self.samples[0]["ts"] < horizon:
                self.samples = [s for s in self.samples if s["ts"] >= horizon]
        return new


class RunOrder:
    """The jobs in the order a table shows them, kept up to date one job at a time.

    Running first (longest running on top), then finished ones (latest first), then the queue
    in the order it drains (by id). Each change is a bisect into a sorted list, so a night of
    10 000 jobs is never sorted again after it was read.
    """

    def __init__(self) -> None:
        self._running: list[tuple[float, int]] = []
        self._finished: list[tuple[float, int]] = []
        self._queued: list[int] = []
        self._where: dict[int, tuple[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._where)

    def update(self, job: JobSummary) -> None:
        self.discard(job.id)
        if job.status == "running":
            item: Any = (job.started or job.created, job.id)
            bisect.insort(self._running, item)
            self._where[job.id] = ("running", item)
        elif job.status in ("done", "failed"):
            item = (-(job.finished or 0.0), job.id)
            bisect.insort(self._finished, item)
            self._where[job.id] = ("finished", item)
        else:
            bisect.insort(self._queued, job.id)
            self._where[job.id] = ("queued", job.id)

    def discard(self, job_id: int) -> None:
        old = self._where.pop(job_id, None)
        if old is None:
            return
        bucket = {"running": self._running, "finished": self._finished, "queued": self._queued}
        items: list[Any] = bucket[old[0]]
        i = bisect.bisect_left(items, old[1])
        if i < len(items) and items[i] == old[1]:
            del items[i]

    def __iter__(self) -> Iterator[int]:
        for _, job_id in self._running:
            yield job_id
        for _, job_id in self._finished:
            yield job_id
        yield from self._queued


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

    # -- reading ----------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return (self.artifacts / DB_FILE).exists()

    @property
    def samples(self) -> list[dict[str, Any]]:
        return self.metrics.samples

    def refresh_all(self) -> set[int]:
        self.refresh_control()
        self.refresh_metrics()
        return self.refresh_jobs(full=True)

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
            path = self.artifacts / RUNS / name / "run.json"
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
            folder = self.artifacts / RUNS / job.run_name
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
            nodes = list(_flow_agents(self.artifacts, flow_sha).items())
            if nodes:
                self._flow_nodes[flow_sha] = nodes
        return nodes

    def close(self) -> None:
        if self._queue is not None:
            self._queue.close()
            self._queue = None


def _node_in_flight(folder: Path) -> bool:
    return (
        (folder / "input.json").exists()
        and not (folder / "output.json").exists()
        and not (folder / "error.txt").exists()
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
        return f"{path} does not fit run.json: {exc.errors()[0]['msg']}"
    return None


# -- one run, whole --------------------------------------------------------------------------


@dataclass
class CallView:
    """One line of a node's ``calls.jsonl``."""

    data: dict[str, Any] | None
    problem: str | None = None


@dataclass
class NodeView:
    id: str
    agent: str | None
    status: str
    input: Any = None
    output: Any = None
    error: str | None = None
    calls: list[CallView] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Files of this node that could not be read."""


@dataclass
class RunView:
    name: str
    record: RunRecord | None
    failed: FailedRecord | None
    nodes: list[NodeView]
    problems: list[str]
    """Why the run's own files could not be read."""

    @property
    def status(self) -> str:
        return self.record.status if self.record else "unreadable"


def _flow_agents(artifacts: Path, flow_sha: str | None) -> dict[str, str]:
    """Node id -> agent name, from the flow text stored in the queue."""
    if not flow_sha or not (Path(artifacts) / DB_FILE).exists():
        return {}
    try:
        with JobQueue(artifacts, create=False, timeout_s=2.0) as queue:
            _, text = queue.flow_text(flow_sha)
        spec = yaml.safe_load(text)
        return {
            str(n["id"]): str(n["agent"])
            for n in spec.get("nodes", [])
            if isinstance(n, dict) and "id" in n and "agent" in n
        }
    except (PantheonError, yaml.YAMLError, AttributeError, TypeError):
        return {}


def _read_any(path: Path, problems: list[str]) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError:
        return None
    except ArtifactError as exc:
        problems.append(exc.message)
        return None


def _read_calls(path: Path, problems: list[str]) -> list[CallView]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        problems.append(f"cannot read {path}: {exc.strerror or exc}")
        return []
    calls = []
    for i, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            calls.append(CallView(None, f"{path} line {i} is not JSON ({exc})"))
            continue
        if isinstance(value, dict):
            calls.append(CallView(value))
        else:
            calls.append(CallView(None, f"{path} line {i} is not an object"))
    return calls


def load_run(artifacts: Path, run_name: str) -> RunView:
    """One run's folder, read whole: the record, FAILED.json, and each node's files."""
    artifacts = Path(artifacts)
    folder = artifacts / RUNS / run_name
    problems: list[str] = []
    record: RunRecord | None = None
    data = _read_any(folder / "run.json", problems)
    if data is not None:
        try:
            record = RunRecord.model_validate(data)
        except ValidationError as exc:
            why = exc.errors()[0]["msg"]
            problems.append(f"{folder / 'run.json'} does not fit run.json: {why}")
    elif not problems and not folder.is_dir():
        problems.append(f"{folder} does not exist (the job has not started)")
    failed: FailedRecord | None = None
    fdata = _read_any(folder / "FAILED.json", problems)
    if fdata is not None:
        try:
            failed = FailedRecord.model_validate(fdata)
        except ValidationError as exc:
            problems.append(f"{folder / 'FAILED.json'} is not usable: {exc.errors()[0]['msg']}")
    agents = _flow_agents(artifacts, record.flow_sha256 if record else None)
    order = list(record.nodes) if record else []
    try:
        on_disk = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    except OSError:
        on_disk = []
    order += [n for n in on_disk if n not in order]
    nodes = []
    for node_id in order:
        nd = folder / node_id
        node_problems: list[str] = []
        error = None
        try:
            error = (nd / "error.txt").read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            pass
        except OSError as exc:
            node_problems.append(f"cannot read {nd / 'error.txt'}: {exc.strerror or exc}")
        status = record.nodes.get(node_id, "unknown") if record else "unknown"
        if status == "pending" and record and record.status == "running":
            # run.json is written when a group of nodes ends; the files say more
            if (nd / "output.json").exists():
                status = "done"
            elif (nd / "error.txt").exists():
                status = "failed"
            elif (nd / "input.json").exists():
                status = "running"
        nodes.append(
            NodeView(
                id=node_id,
                agent=agents.get(node_id),
                status=status,
                input=_read_any(nd / "input.json", node_problems),
                output=_read_any(nd / "output.json", node_problems),
                error=error,
                calls=_read_calls(nd / "calls.jsonl", node_problems),
                problems=node_problems,
            )
        )
    return RunView(run_name, record, failed, nodes, problems)


# -- the table of runs -----------------------------------------------------------------------


@dataclass(frozen=True)
class RunFilter:
    """Which runs a table shows: ``status:failed flow:docops agent:codegen`` and free words."""

    status: str | None = None
    flow: str | None = None
    agent: str | None = None
    words: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> RunFilter:
        fields: dict[str, str] = {}
        words = []
        for token in text.split():
            key, sep, value = token.partition(":")
            if sep and key.lower() in ("status", "flow", "agent") and value:
                fields[key.lower()] = value.lower()
            else:
                words.append(token.lower())
        return cls(**fields, words=tuple(words))

    def __str__(self) -> str:
        parts = [f"{k}:{v}" for k in ("status", "flow", "agent") if (v := getattr(self, k))]
        return " ".join(parts + list(self.words))

    def with_status(self, status: str | None) -> RunFilter:
        return RunFilter(status, self.flow, self.agent, self.words)

    def matches(
        self, job: JobSummary, problem: str | None = None, now: Sequence[tuple[str, str]] = ()
    ) -> bool:
        """Whether the job passes; ``now`` is the (node, agent) pairs it runs at present."""
        agents = " ".join(a for _, a in now) if now else job.agent
        if self.status and not (
            job.status.startswith(self.status) or (self.status == "unreadable" and problem)
        ):
            return False
        if self.flow and self.flow not in job.flow.lower():
            return False
        if self.agent and self.agent not in agents.lower():
            return False
        if self.words:
            hay = " ".join(
                (
                    job.run_name,
                    job.status,
                    job.next_agent,
                    job.node or "",
                    job.error or "",
                    problem or "",
                )
            ).lower()
            return all(w in hay for w in self.words)
        return True


def table_jobs(
    jobs: Mapping[int, JobSummary],
    problems: Mapping[str, str],
    flt: RunFilter,
    *,
    order: Iterable[int] | None = None,
    in_flight: Mapping[int, Sequence[tuple[str, str]]] | None = None,
    limit: int = 500,
) -> tuple[list[JobSummary], int | None]:
    """The first ``limit`` jobs that pass the filter, in table order, and how many pass in all
    (None when there are more than ``limit`` and counting them would mean reading them all).

    Running first (longest running on top), then finished ones (latest first), then the queue
    in the order it drains; ``order`` is that order when the caller keeps it (:class:`RunOrder`).
    """
    in_flight = in_flight or {}
    if order is None:
        tmp = RunOrder()
        for job in jobs.values():
            tmp.update(job)
        order = tmp
    plain = flt == RunFilter()
    shown: list[JobSummary] = []
    for job_id in order:
        job = jobs.get(job_id)
        if job is None:
            continue
        if plain or flt.matches(job, problems.get(job.run_name), in_flight.get(job_id, ())):
            if len(shown) == limit:
                return shown, (len(jobs) if plain else None)
            shown.append(job)
    return shown, len(shown)
