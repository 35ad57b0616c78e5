"""The training screen's data: each agent's overview and each training's progress, read from
``training/`` and ``adapters/registry.json`` again only where a file changed.

A file is read again when its stat (inode, mtime, size) moved, and a training's progress is
read from where the last read ended.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pantheon.core.errors import ArtifactError
from pantheon.core.learn.files import (
    AgentTraining,
    ProgressRow,
    agent_overview,
    read_progress,
    read_state,
    registry_path,
    training_root,
)

__all__ = ["MAX_POINTS", "Progress", "Stat", "TrainingFiles"]

Stat = tuple[int, int, int] | None
"""A file's (inode, mtime in ns, size), or None when it is missing."""

MAX_POINTS = 2000
"""Loss points kept per training (the plot shows the last ones that fit)."""


def _stat(path: Path) -> Stat:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass
class Progress:
    """What was read of one training's ``progress.jsonl``."""

    stat: Stat = None
    offset: int = 0
    points: list[tuple[int, float]] = field(default_factory=list)
    last: ProgressRow | None = None


class TrainingFiles:
    """The training screen's data, read again only where a file changed."""

    def __init__(self, artifacts: Path) -> None:
        self.artifacts = Path(artifacts)
        self.root = training_root(self.artifacts)
        self.rows: list[AgentTraining] = []
        self.problems: list[str] = []
        self.reads = 0
        """How many times the whole overview was read."""
        self._layout: Any = None
        self._states: dict[str, Stat] = {}
        self._progress: dict[str, Progress] = {}

    def _scan(self) -> tuple[Any, dict[str, Stat]]:
        """What decides the rows (the registry, each mine.json, which trainings exist), and
        each training's state.json."""
        entries: list[tuple[str, Stat, bool]] = []
        states: dict[str, Stat] = {}
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root) as it:
            for entry in it:
                if not entry.is_dir():
                    continue
                folder = Path(entry.path)
                state = _stat(folder / "state.json")
                states[entry.name] = state
                entries.append((entry.name, _stat(folder / "mine.json"), state is not None))
        entries.sort()
        return (_stat(registry_path(self.artifacts)), tuple(entries)), states

    def poll(self) -> bool:
        """Read what changed since the last poll; say whether the rows changed."""
        layout, states = self._scan()
        if layout != self._layout:
            self._layout, self._states = layout, states
            self.rows, self.problems = agent_overview(self.artifacts)
            self.reads += 1
            return True
        changed = False
        for i, row in enumerate(self.rows):
            if row.latest is None:
                continue
            tid = row.latest.id
            if states.get(tid) == self._states.get(tid):
                continue
            self._states[tid] = states.get(tid)
            try:
                latest = read_state(self.root / tid)
            except (ArtifactError, FileNotFoundError):
                continue  # being replaced: the next poll reads it
            self.rows[i] = row.model_copy(update={"latest": latest})
            changed = True
        return changed

    def progress(self, training: str) -> tuple[Progress, bool]:
        """The training's progress, and whether it moved since the last call."""
        p = self._progress.setdefault(training, Progress())
        folder = self.root / training
        stat = _stat(folder / "progress.jsonl")
        if stat == p.stat:
            return p, False
        if p.stat is not None and (stat is None or stat[0] != p.stat[0] or stat[2] < p.offset):
            p = self._progress[training] = Progress()  # replaced or cut: read it again
        p.stat = stat
        rows, p.offset = read_progress(folder, p.offset)
        if rows:
            p.points.extend((r.step, r.loss) for r in rows)
            if len(p.points) > 2 * MAX_POINTS:
                del p.points[:-MAX_POINTS]
            p.last = rows[-1]
        return p, True
