"""Watch the artifacts directory and tell a callback what changed, merged into batches.

The watcher imports no UI: it runs in a thread of its own (or any blocking context), uses
``watchfiles`` (inotify on Linux), and calls a plain callback with an :class:`ArtifactChanges`
that says which parts of the night changed — the queue, the controls, the metrics, which runs.
Bursts are merged by ``watchfiles``' debounce, so a night that writes 50 files a second gives
the callback a couple of batches a second, not 50 calls.

Only a handful of folders are watched, none recursively: the artifacts directory itself (the
queue database, ``control.json``), ``metrics/``, ``runs/`` (runs that appear), ``engines/`` (the
engines' heartbeats) and, when asked,
one run's folder and its node folders (for a screen that shows that run). So a night of 10 000
runs costs a few inotify watches, not 70 000. A folder that does not exist yet (a night that has
not started) is waited for, and when it appears the watch starts over with it; the callback then
gets ``rescan=True`` because changes between the two watches may have been missed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import watchfiles

from pantheon.core.observe.engines import ENGINES_DIR
from pantheon.core.store.atomic import TMP_PREFIX
from pantheon.core.store.layout import CONTROL_FILE, DB_FILE, METRICS_FILE, RUNS

__all__ = ["NETWORK_FS", "ArtifactChanges", "ArtifactsWatcher", "classify", "network_fs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArtifactChanges:
    """What changed in the artifacts directory since the last batch."""

    queue: bool = False
    """The queue database (jobs enqueued, claimed, finished)."""
    control: bool = False
    """``control.json``."""
    metrics: bool = False
    """``metrics/engine.jsonl`` (a new sample)."""
    runs: frozenset[str] = frozenset()
    """Run folders (names under ``runs/``) that appeared or whose files changed."""
    other: frozenset[str] = frozenset()
    """Other top-level entries (``summary.json``, ``decisions.jsonl``, ``adapters``...)."""
    rescan: bool = False
    """Changes may have been missed (the watch started over): read everything again."""

    def __bool__(self) -> bool:
        return bool(
            self.queue or self.control or self.metrics or self.runs or self.other or self.rescan
        )

    def merged(self, other: ArtifactChanges) -> ArtifactChanges:
        """Both batches as one."""
        return ArtifactChanges(
            queue=self.queue or other.queue,
            control=self.control or other.control,
            metrics=self.metrics or other.metrics,
            runs=self.runs | other.runs,
            other=self.other | other.other,
            rescan=self.rescan or other.rescan,
        )


def classify(artifacts: Path, paths: Iterable[str]) -> ArtifactChanges:
    """Sort changed paths into the parts of the night they belong to."""
    root = Path(artifacts).resolve()
    queue = control = metrics = False
    runs: set[str] = set()
    other: set[str] = set()
    metrics_name = METRICS_FILE.name
    for raw in paths:
        try:
            rel = Path(raw).resolve().relative_to(root)
        except ValueError:
            continue
        parts = rel.parts
        if not parts:
            continue
        head = parts[0]
        name = parts[-1]
        if name.startswith(TMP_PREFIX):
            continue  # the temporary half of an atomic write: its rename follows
        if head in (DB_FILE, f"{DB_FILE}-wal"):
            queue = True  # not -shm: a reader touches it too, and would wake itself
        elif head == CONTROL_FILE:
            control = True
        elif head == METRICS_FILE.parts[0]:
            metrics = metrics or name == metrics_name
        elif head == RUNS:
            if len(parts) >= 2:
                runs.add(parts[1])
        elif not head.startswith("."):
            other.add(head)
    return ArtifactChanges(
        queue=queue,
        control=control,
        metrics=metrics,
        runs=frozenset(runs),
        other=frozenset(other),
    )


@dataclass
class _Targets:
    paths: list[Path] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)


NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "ceph", "glusterfs", "lustre",
     "fuse.glusterfs", "afs", "gpfs", "beegfs"}
)  # fmt: skip
"""File systems whose other hosts' writes raise no inotify event here: watched by polling."""


def network_fs(path: Path, mounts: str | None = None) -> str | None:
    """The network file system ``path`` is on (its type, from /proc/mounts), or None."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    target = str(Path(path).resolve())
    best, kind = "", None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, parts[2]
    return kind if kind in NETWORK_FS else None


class ArtifactsWatcher:
    """Calls ``callback(changes)`` from its own thread whenever the artifacts directory changes.

    ``run`` names one run whose folder (and node folders) is watched too, for a screen that
    shows it; :meth:`follow_run` changes it while watching. Batches are at most
    ``debounce_ms`` apart while files keep changing, so a busy night gives about one a second.
    """

    def __init__(
        self,
        artifacts: Path,
        callback: Callable[[ArtifactChanges], None],
        *,
        run: str | None = None,
        debounce_ms: int = 1000,
        step_ms: int = 100,
        wait_s: float = 1.0,
        on_quiet: Callable[[], None] | None = None,
        poll: bool | None = None,
    ) -> None:
        self.artifacts = Path(artifacts)
        self.poll = poll
        """Look at the files every ``step_ms`` instead of waiting for the kernel's events: for
        an artifacts directory on a network file system, which other hosts write (None: when
        it is on one)."""
        self.callback = callback
        self.debounce_ms = debounce_ms
        self.step_ms = step_ms
        self.wait_s = wait_s
        self.on_quiet = on_quiet
        """Called from the watcher's thread after ``wait_s`` without a change (for polls)."""
        self._run = run
        self._stop = threading.Event()
        self._restart = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        """Why the last watch failed (it is tried again), or None."""

    # -- control ----------------------------------------------------------------------------

    def start(self) -> None:
        """Watch in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="pantheon-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._restart.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def follow_run(self, run: str | None) -> None:
        """Watch this run's folder too (None: no run), from the next batch on."""
        if run != self._run:
            self._run = run
            self._restart.set()

    # -- the loop ---------------------------------------------------------------------------

    def _targets(self) -> _Targets:
        t = _Targets()
        wanted = [
            self.artifacts,
            self.artifacts / METRICS_FILE.parent,
            self.artifacts / RUNS,
            self.artifacts / ENGINES_DIR,  # the engines' heartbeat files
        ]
        if self._run:
            run_dir = self.artifacts / RUNS / self._run
            wanted.append(run_dir)
            with contextlib.suppress(OSError):
                wanted += [Path(e.path) for e in os.scandir(run_dir) if e.is_dir()]
        for path in wanted:
            (t.paths if path.is_dir() else t.missing).append(path)
        return t

    def run(self) -> None:
        """Watch until :meth:`stop` (blocking)."""
        first = True
        while not self._stop.is_set():
            self._restart.clear()
            targets = self._targets()
            if not targets.paths:
                first = False  # once it appears, what is there is news
                self._stop.wait(self.wait_s)  # the artifacts directory does not exist yet
                continue
            if not first:
                self._emit(ArtifactChanges(rescan=True))
            first = False
            try:
                self._watch(targets)
            except Exception as exc:  # an OS watch failure: say so, wait, try again
                self.error = f"cannot watch {self.artifacts}: {exc}"
                log.warning("%s; trying again", self.error)
                self._stop.wait(self.wait_s)

    def _watch(self, targets: _Targets) -> None:
        missing = set(targets.missing)
        watched = set(targets.paths)
        poll = self.poll
        if poll is None:
            kind = network_fs(self.artifacts)
            poll = self.poll = kind is not None
            if poll:
                log.info("%s is on %s: its files are polled, not watched", self.artifacts, kind)
        for batch in watchfiles.watch(
            *targets.paths,
            watch_filter=None,
            debounce=self.debounce_ms,
            step=self.step_ms,
            stop_event=self._restart,
            rust_timeout=int(self.wait_s * 1000),
            yield_on_timeout=True,
            recursive=False,
            raise_interrupt=False,
            force_polling=poll,
            poll_delay_ms=max(self.step_ms, 300),
        ):
            self.error = None
            if not batch and self.on_quiet is not None:
                try:
                    self.on_quiet()
                except Exception:
                    log.exception("the artifacts watcher's quiet callback failed")
            if batch:
                paths = [p for _, p in batch]
                changes = classify(self.artifacts, paths)
                if changes:
                    self._emit(changes)
                # a folder we want appeared (runs/, metrics/, a node of the followed run)
                if any(Path(p) in missing for p in paths) or (
                    self._run and self._new_node_dir(paths, watched)
                ):
                    self._restart.set()
            if missing and any(p.is_dir() for p in missing):
                self._restart.set()
            if self._restart.is_set():
                return

    def _new_node_dir(self, paths: list[str], watched: set[Path]) -> bool:
        run_dir = self.artifacts / RUNS / (self._run or "")
        for p in paths:
            path = Path(p)
            if path.parent == run_dir and path not in watched and path.is_dir():
                return True
        return False

    def _emit(self, changes: ArtifactChanges) -> None:
        try:
            self.callback(changes)
        except Exception:  # the callback's trouble must not end the watch
            log.exception("the artifacts watcher's callback failed")
