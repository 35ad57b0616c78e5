"""What passes between the console app and its parts.

The app reads the night into a :class:`NightSnapshot` and hands it down to the screens in a
:class:`NightChanged` message. The screens and the command palette call the app back through
:class:`ConsoleApp`, the part of the app they use, so none of them imports the app.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from textual.message import Message

from pantheon.core.observe.engines import EngineBeat
from pantheon.core.observe.watch import ArtifactChanges
from pantheon.core.store.control import Control
from pantheon.core.store.queue import JobSummary

__all__ = ["ConsoleApp", "NightChanged", "NightSnapshot"]


@dataclass(frozen=True)
class NightSnapshot:
    """What the screens show, read in the watcher's thread and handed over whole."""

    exists: bool
    jobs: dict[int, JobSummary]
    control: Control
    control_error: str | None
    queue_error: str | None
    samples: list[dict[str, Any]]
    problems: dict[str, str]
    in_flight: dict[int, tuple[tuple[str, str], ...]]
    waiting: dict[int, float]
    """Running job id -> since when it waits on a model call (epoch seconds)."""
    order: tuple[int, ...]
    """Job ids in table order (running, then the latest finished, then the queue)."""
    totals: dict[str, int]
    read_at: float
    beats: tuple[EngineBeat, ...] = ()
    """The engines' heartbeats (this directory's, and every host's a shared queue keeps),
    read with the rest, off the UI thread."""


@dataclass
class NightChanged(Message):
    """The night changed; ``changes`` says which parts (merged over skipped messages)."""

    snapshot: NightSnapshot
    changes: ArtifactChanges
    changed_jobs: set[int] = field(default_factory=set)
    urgent: bool = False
    """Show it now (the operator's own change), not at the next redraw."""

    def can_replace(self, message: Message) -> bool:
        if isinstance(message, NightChanged):
            message.absorb(self)
            return True
        return False

    def absorb(self, older: NightChanged) -> None:
        """Take in what an older message said changed (its snapshot is older than ours)."""
        self.changes = older.changes.merged(self.changes)
        self.changed_jobs |= older.changed_jobs
        self.urgent = self.urgent or older.urgent


class ConsoleApp(Protocol):
    """The console app as its screens and its command palette use it
    (:class:`pantheon.console.app.PantheonConsole` is the one app)."""

    artifacts: Path
    """The artifacts directory the console watches."""
    snapshot: NightSnapshot | None
    """The night as last shown; ``None`` until it was read once."""
    clock: Callable[[], float]
    """The time now (epoch seconds); tests fix it."""

    def follow_run(self, run: str | None) -> None:
        """Watch this run's folder too (``None``: no run's)."""

    def current_control(self) -> Control:
        """The controls in force, as last read."""

    def start_training(self, agent: str) -> None:
        """Train ``agent``'s adapter in a process of its own."""

    def start_learning(self) -> None:
        """Run the whole learn loop in a process of its own."""

    # the keys' actions, which the command palette offers too
    def action_toggle_merges(self) -> None: ...
    def action_toggle_queue(self) -> None: ...
    def action_concurrency(self, step: int) -> None: ...
    def action_review(self) -> None: ...
    def action_training(self) -> None: ...
    def action_help(self) -> None: ...
    def action_stop_night(self) -> None: ...
