"""The operator console: a Textual app over the artifacts directory.

The app is thin. A watcher thread (:class:`pantheon.core.observe.watch.ArtifactsWatcher`) says what
changed; the same thread reads the changed parts into a :class:`NightView` and posts one
:class:`~pantheon.console.messages.NightChanged` message with a snapshot. Messages that pile up
while the UI is busy are merged (``can_replace``), so a night writing 50 files a second never
floods the screen. The screens show snapshots; the only thing the console writes is
``control.json`` (and the log of a training the operator starts from the training screen).
"""

from __future__ import annotations

import contextlib
import gc
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import Screen

from pantheon.core.errors import PantheonError
from pantheon.core.learn.files import MIN_EXAMPLES, list_trainings, training_root
from pantheon.core.observe.watch import ArtifactChanges, ArtifactsWatcher
from pantheon.core.run.nightlock import night_holder, stop_night
from pantheon.core.store.control import Control, ControlFile
from pantheon.core.views.night import NightView

from .launch import launch_training
from .messages import NightChanged, NightSnapshot
from .palette import night_commands
from .screens.dashboard import DashboardScreen
from .screens.dialogs import ConfirmScreen, HelpScreen
from .screens.training import TrainingScreen

__all__ = ["PantheonConsole"]

BY_OP = "by the operator"

LEARN_KEY = "(learn)"
"""The launched learn loop, beside the agents' trainings."""


GC_SETTLE_S = 600.0
"""How often the console settles the garbage collector (see ``_settle_gc``)."""


class PantheonConsole(App[None]):
    """Watch and steer a night."""

    TITLE = "Pantheon"
    CSS_PATH = "console.tcss"
    ENABLE_COMMAND_PALETTE = True

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("m", "toggle_merges", "Merges"),
        Binding("p", "toggle_queue", "Queue"),
        Binding("plus,equals_sign", "concurrency(1)", "c±", key_display="+/-"),
        Binding("minus", "concurrency(-1)", "c-", key_display="-", show=False),
        Binding("r", "review", "Review"),
        Binding("t", "training", "Training"),
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("S", "stop_night", "Stop night", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        artifacts: Path,
        *,
        watch: bool = True,
        clock: Callable[[], float] = time.time,
        debounce_ms: int = 1000,
        redraw_every_s: float = 1.0,
        night: subprocess.Popen[bytes] | None = None,
        night_log: Path | None = None,
    ) -> None:
        super().__init__()
        self.artifacts = Path(artifacts)
        self.clock = clock
        self.view = NightView(self.artifacts)
        self.snapshot: NightSnapshot | None = None
        self._watch = watch
        self._lock = threading.Lock()
        self._loaded = False
        self.redraw_every_s = redraw_every_s
        self._held: NightChanged | None = None
        self._shown_at = 0.0
        self._redraw_timer: Any = None
        self.reads = 0
        """How many times the night was read (each a NightChanged), and their CPU seconds."""
        self.read_cpu_s = 0.0
        self.watcher = ArtifactsWatcher(
            self.artifacts,
            self._changed_in_thread,
            debounce_ms=debounce_ms,
            on_quiet=self._quiet_in_thread,
        )
        self.night = night
        """The night's own process, when this console was opened by ``pantheon night``."""
        self.night_log = night_log
        self._night_ended: int | None = None
        self._stop_asked = False
        """The operator stopped the night once: S again cancels its jobs in flight."""
        self.training_launcher: Callable[[list[str], Path], object] = launch_training
        """Starts a training's command (argv) with its output in a log file; tests replace it."""
        self._launched: dict[str, subprocess.Popen[bytes]] = {}
        self._gc_settled_at = -1e9
        self.sub_title = str(self.artifacts)

    # -- reading the night ------------------------------------------------------------------

    def read(self, changes: ArtifactChanges) -> NightChanged:
        """Read what changed into the view; return the message that carries it (any thread)."""
        cpu = time.thread_time()
        with self._lock:
            view = self.view
            first, self._loaded = not self._loaded, True
            changed: set[int] = set()
            if first or changes.rescan:
                changed = view.refresh_all()
                changes = ArtifactChanges(queue=True, control=True, metrics=True, rescan=True)
            else:
                if changes.control:
                    view.refresh_control()
                if changes.metrics:
                    view.refresh_metrics()
                if changes.queue or changes.runs:
                    changed = view.refresh_jobs()
                if changes.runs:
                    view.check_runs(changes.runs)
                if not (changes.queue or changes.runs):
                    changed = view.refresh_in_flight()
                if "engines" in changes.other:
                    view.refresh_beats()
            snapshot = NightSnapshot(
                exists=view.exists,
                jobs=dict(view.jobs),
                control=view.control,
                control_error=view.control_error,
                queue_error=view.queue_error,
                samples=list(view.samples),
                problems=dict(view.problems),
                in_flight=dict(view.in_flight),
                waiting=dict(view.waiting),
                order=tuple(view.order),
                totals=dict(view.totals),
                read_at=self.clock(),
                beats=tuple(view.beats),
            )
            self.reads += 1
            self.read_cpu_s += time.thread_time() - cpu
        return NightChanged(snapshot, changes, changed)

    def _changed_in_thread(self, changes: ArtifactChanges) -> None:
        self.post_message(self.read(changes))

    def _quiet_in_thread(self) -> None:
        """No change for a second: nodes may still have started inside a run's folder, which
        is not watched (it would cost a watch per run); look, if any job is running."""
        if self.view.shared:  # other hosts' changes to the queue raise no file event here
            message = self.read(ArtifactChanges(queue=True))
            self.post_message(message)
        elif self.view.totals.get("running"):
            message = self.read(ArtifactChanges())
            if message.changed_jobs:
                self.post_message(message)

    def refresh_night(self, changes: ArtifactChanges | None = None) -> None:
        """Read the night now (from the UI thread), e.g. right after a control was written,
        and show it at once."""
        message = self.read(ArtifactChanges(rescan=True) if changes is None else changes)
        message.urgent = True
        self.post_message(message)

    def on_mount(self) -> None:
        self.push_screen(DashboardScreen())
        if self.night is not None:
            self.set_interval(1.0, self._check_night)
        if self._watch:
            self.run_worker(self._run_watcher, thread=True, group="watch", exclusive=True)
        else:
            self.refresh_night()

    def _run_watcher(self) -> None:
        self._changed_in_thread(ArtifactChanges(rescan=True))
        self.watcher.run()

    def on_night_changed(self, message: NightChanged) -> None:
        """Show the night at most ``redraw_every_s`` apart: what arrives sooner waits, merged
        with what follows, so a night writing 50 files a second redraws about once a second."""
        if self._held is not None:
            message.absorb(self._held)
            self._held = None
        wait = self._shown_at + self.redraw_every_s - time.monotonic()
        if wait > 0 and not message.urgent:
            self._held = message
            if self._redraw_timer is None:
                self._redraw_timer = self.set_timer(wait, self._show_held)
            return
        self._show(message)

    def _show_held(self) -> None:
        self._redraw_timer = None
        if self._held is not None:
            held, self._held = self._held, None
            self._show(held)

    def _show(self, message: NightChanged) -> None:
        self._shown_at = time.monotonic()
        self.snapshot = message.snapshot
        for screen in self.screen_stack:
            handler = getattr(screen, "night_changed", None)
            # a screen still composing shows the snapshot from its own on_mount
            if handler is not None and screen.is_mounted:
                handler(message)
        if self._shown_at - self._gc_settled_at > GC_SETTLE_S:
            self._settle_gc()

    def _settle_gc(self) -> None:
        """Collect once, then move what lives (a big night's rows, the widgets) out of the
        collector's sight: its full passes would otherwise scan them all again and again, a
        50-100 ms stall of the screen at random moments. Once at the start, then every ten
        minutes, when a pause is expected."""
        self._gc_settled_at = time.monotonic()
        gc.collect()
        gc.freeze()

    def _check_night(self) -> None:
        if self.night is None or self._night_ended is not None:
            return
        code = self.night.poll()
        if code is None:
            return
        self._night_ended = code
        self.sub_title = f"{self.artifacts} · the night is over"
        if code == 0:
            self.notify("The night is over. Press q to leave and see its figures.", timeout=30)
        else:
            self.notify(
                f"The night stopped with exit status {code}; its log: {self.night_log}",
                severity="error",
                timeout=60,
            )

    async def on_unmount(self) -> None:
        self.watcher.stop(timeout=2.0)
        with self._lock:
            self.view.close()

    def follow_run(self, run: str | None) -> None:
        """Watch this run's folder too (a detail screen shows it)."""
        self.watcher.follow_run(run)

    # -- controls ---------------------------------------------------------------------------

    def current_control(self) -> Control:
        return self.snapshot.control if self.snapshot else Control()

    def write_control(self, **changes: object) -> Control | None:
        """Write ``control.json`` (atomically, under its lock) and show the result."""
        if not self.artifacts.is_dir():
            self.notify(
                f"{self.artifacts} does not exist: there is no night to steer yet",
                severity="error",
            )
            return None
        try:
            control = ControlFile(self.artifacts).update(by="console", **changes)
        except PantheonError as exc:
            self.notify(exc.message, title="control not changed", severity="error")
            return None
        self.refresh_night(ArtifactChanges(control=True))
        return control

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: Any = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """Notifications hold file names and git's words: never read them as markup."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    def action_toggle_merges(self) -> None:
        if self.current_control().merges_paused:
            self.push_screen(
                ConfirmScreen(
                    "Resume merges?",
                    "The merge gate will merge changes whose tests passed and whose two "
                    "reviewers agreed, from now on.",
                    yes="Resume merges",
                ),
                lambda ok: ok and self.write_control(merges_paused=False),
            )
        else:
            self.push_screen(
                ConfirmScreen(
                    "Pause merges?",
                    "Changes will wait on their branches for the morning review.",
                    yes="Pause merges",
                ),
                lambda ok: ok and self._pause("merges"),
            )

    def action_toggle_queue(self) -> None:
        if self.current_control().queue_paused:
            self.write_control(queue_paused=False)
            self.notify("queue resumed: the engine claims jobs again")
        else:
            self.push_screen(
                ConfirmScreen(
                    "Pause the queue?",
                    "Running jobs finish; no new job starts until you resume.",
                    yes="Pause the queue",
                ),
                lambda ok: ok and self._pause("queue"),
            )

    def _pause(self, what: str) -> Control | None:
        return self.write_control(**{f"{what}_paused": True, f"{what}_paused_reason": BY_OP})

    def action_concurrency(self, step: int) -> None:
        c = self.current_control().concurrency + step
        if c < 1:
            self.notify("concurrency is already 1", severity="warning")
            return
        if self.write_control(concurrency=c) is not None:
            self.notify(f"concurrency c = {c}")

    def action_review(self) -> None:
        from .screens.review import ReviewScreen

        if not isinstance(self.screen, ReviewScreen):
            self.push_screen(ReviewScreen())

    def action_training(self) -> None:
        if not isinstance(self.screen, TrainingScreen):
            self.push_screen(TrainingScreen())

    def start_training(self, agent: str) -> None:
        """Train ``agent``'s adapter in a process of its own, evaluated and promoted if it does
        better; the night and the console go on. Refused while the agent trains already."""
        trainings = list_trainings(self.artifacts, agent)
        launched = self._launched.get(agent)
        if (trainings and trainings[-1].alive) or (launched and launched.returncode is None):
            self.notify(f"{agent} is training already: wait for it to end", severity="warning")
            return
        mined = training_root(self.artifacts) / agent / "mine.json"
        with contextlib.suppress(OSError, ValueError):
            train = int(json.loads(mined.read_bytes()).get("train", 0))
            if train < MIN_EXAMPLES:
                self.notify(
                    f"not enough data for {agent} ({train} < {MIN_EXAMPLES} green examples): "
                    "mine more nights first",
                    severity="warning",
                )
                return
        argv = ["train", agent, "--artifacts", str(self.artifacts), "--promote"]
        log = training_root(self.artifacts) / agent / "launch.log"
        self._launch(agent, argv, log, f"training {agent} in the background", "the training")

    def start_learning(self) -> None:
        """The whole learn loop (``pantheon learn``) in a process of its own: mine, train each
        agent with enough new green examples, judge, promote. Refused while one runs."""
        launched = self._launched.get(LEARN_KEY)
        if launched is not None and launched.returncode is None:
            self.notify("the learn loop is running already: wait for it to end", severity="warning")
            return
        if any(s.alive for s in list_trainings(self.artifacts)):
            self.notify("a training is running: wait for it to end", severity="warning")
            return
        argv = ["learn", "--artifacts", str(self.artifacts)]
        log = training_root(self.artifacts) / "learn.log"
        self._launch(
            LEARN_KEY, argv, log, "the learn loop runs in the background", "the learn loop"
        )

    def _launch(self, key: str, args: list[str], log: Path, started: str, what: str) -> None:
        """``pantheon ARGS`` in a process of its own, its output in ``log``."""
        argv = [sys.executable, "-m", "pantheon.console", *args]
        try:
            proc = self.training_launcher(argv, log)
        except OSError as exc:
            self.notify(f"cannot start {what}: {exc}", severity="error")
            return
        if isinstance(proc, subprocess.Popen):
            self._launched[key] = proc
        self.notify(f"{started}; its output: {log}")

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        if self.night is not None and self.night.poll() is None:
            self.push_screen(
                ConfirmScreen(
                    "Leave the night running?",
                    "The night goes on in the background without the console: "
                    "`pantheon console` watches it again, and pausing the queue (p) stops "
                    f"new work. Its log: {self.night_log}",
                    yes="Quit the console",
                    no="Stay",
                ),
                lambda ok: ok and self.exit(),
            )
            return
        self.exit()

    def get_system_commands(self, screen: Screen) -> Any:
        yield from super().get_system_commands(screen)
        yield from night_commands(self)

    def action_stop_night(self) -> None:
        holder = night_holder(self.artifacts)
        if holder is None:
            self.notify("no night is running on these artifacts", severity="warning")
        elif self._stop_asked:
            stop_night(self.artifacts, hard=True)
            self.notify("cancelling the jobs in flight: they resume next time")
        else:
            self.push_screen(
                ConfirmScreen(
                    "Stop the night?",
                    f"The {holder.line()} stops: its jobs in flight finish, then its model "
                    "servers stop; the jobs left wait in the queue for the next night. "
                    "S again cancels the jobs in flight.",
                    yes="Stop the night",
                ),
                lambda ok: ok and self._stop_night(),
            )

    def _stop_night(self) -> None:
        if stop_night(self.artifacts) is not None:
            self._stop_asked = True
            self.notify("the night is stopping: its jobs in flight finish first")
