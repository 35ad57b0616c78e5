"""The learn loop: each agent's mined data, promoted adapter and latest training; train one.

The screen reads ``training/`` and ``adapters/registry.json`` once a second, and only what
changed since: a file is read again when its stat (inode, mtime, size) moved, and the progress
of the training on screen is read from where the last read ended.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Header, ProgressBar, Static

from pantheon.core.errors import ArtifactError
from pantheon.core.learn.files import (
    MIN_EXAMPLES,
    AgentTraining,
    ProgressRow,
    TrainingState,
    agent_overview,
    read_progress,
    read_state,
    registry_path,
    training_root,
)
from pantheon.widgets.loss_plot import LossPlot

from .dialogs import ConfirmScreen
from .format import age
from .screen import ConsoleScreen

__all__ = ["TrainingFiles", "TrainingScreen", "launch_training"]

Stat = tuple[int, int, int] | None
"""A file's (inode, mtime in ns, size), or None when it is missing."""

MAX_POINTS = 2000
"""Loss points kept per training (the plot shows the last ones that fit)."""

STATUS_STYLE = {
    "running": "bold yellow",
    "evaluating": "bold yellow",
    "interrupted": "magenta",
    "failed": "bold red",
    "done": "green",
    "abandoned": "dim",
}

COLUMNS = (
    ("agent", "agent", False),
    ("train", "train", True),
    ("heldout", "held-out", True),
    ("tasks", "tasks", True),
    ("adapter", "adapter", False),
    ("evidence", "passed base→adapter", False),
    ("latest", "latest training", False),
)
"""(key, label, right-aligned)."""


def _stat(path: Path) -> Stat:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def launch_training(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own with its output in ``log``: it outlives the
    console. A thread waits for it, so that it leaves no zombie behind while the console runs."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    threading.Thread(target=proc.wait, name=f"wait-{proc.pid}", daemon=True).start()
    return proc


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


def _evidence(evidence: dict[str, Any]) -> str:
    base, adapter, tasks = (evidence.get(k) for k in ("base_passed", "adapter_passed", "tasks"))
    if not all(isinstance(v, int) for v in (base, adapter, tasks)):
        return ""
    p = evidence.get("p_value")
    return f"{base} → {adapter} of {tasks}" + (f", p {p:.2g}" if isinstance(p, int | float) else "")


def _problem(problem: str) -> str:
    """A problem's first line, without the file's name twice (``path: path is corrupt``)."""
    line = problem.splitlines()[0] if problem else ""
    where, _, what = line.partition(": ")
    return what if what.startswith(where) else line


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _step(state: TrainingState, last: ProgressRow | None) -> tuple[int, int]:
    step, steps = state.step, state.steps
    if last is not None:
        step, steps = max(step, last.step), last.steps or steps
    return step, steps


class TrainingScreen(ConsoleScreen):
    """Agents on top; the highlighted agent's latest training below. ``s`` trains one."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("s", "train", "Train"),
        Binding("l", "learn", "Learn all"),
    ]

    def __init__(self, *, poll_s: float = 1.0) -> None:
        super().__init__()
        self.poll_s = poll_s
        self.files: TrainingFiles | None = None
        self.selected: str | None = None
        """The agent under the cursor."""
        self._agents: list[str] = []
        self._cells: dict[str, tuple[Text, ...]] = {}
        self._detail_key: Any = None
        self._head: tuple[Text, str] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="training-head")
        yield Static(id="training-problems")
        yield DataTable(id="training-agents", cursor_type="row", zebra_stripes=True)
        yield Static(id="training-empty")
        with Vertical(id="training-detail"):
            yield Static(id="training-about")
            with Horizontal(id="training-bar"):
                yield Static(id="training-step")
                yield ProgressBar(id="training-progress", show_eta=False)
                yield Static(id="training-eta")
            yield Static(id="training-result")
            yield LossPlot(id="training-loss")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "training"
        self.query_one("#training-loss", LossPlot).border_title = "loss"
        table = self.query_one(DataTable)
        for key, label, right in COLUMNS:
            table.add_column(Text(label, justify="right" if right else "left"), key=key)
        table.focus()
        self.files = TrainingFiles(self.console.artifacts)
        self.poll()
        self.set_interval(self.poll_s, self.poll)

    # -- reading ----------------------------------------------------------------------------

    def poll(self) -> None:
        """Read what changed and show it (once a second)."""
        if self.files is None:
            return
        with contextlib.suppress(NoMatches):  # the screen is being taken down
            self.files.poll()
            self._show_head()
            self._show_table()
            self._show_detail()

    def _row(self) -> AgentTraining | None:
        rows = self.files.rows if self.files else []
        return next((r for r in rows if r.agent == self.selected), None)

    # -- the table --------------------------------------------------------------------------

    def _show_head(self) -> None:
        assert self.files is not None
        rows = self.files.rows
        promoted = sum(r.adapter is not None for r in rows)
        running = sum(r.latest is not None and r.latest.alive for r in rows)
        head = Text()
        head.append(_count(len(rows), "agent"), style="bold")
        head.append(f" · {_count(promoted, 'adapter')} promoted · ")
        head.append(f"{running} training now", style="bold yellow" if running else "")
        head.append("  ·  s or enter: train the highlighted agent", style="dim")
        lines = "\n".join(f"⚠ {_problem(p)}" for p in self.files.problems)
        if (head, lines) == self._head:
            return
        self._head = (head, lines)
        self.query_one("#training-head", Static).update(head)
        problems = self.query_one("#training-problems", Static)
        problems.display = bool(lines)
        problems.update(Text(lines, style="red"))

    def _row_cells(self, row: AgentTraining) -> tuple[Text, ...]:
        mined, adapter, latest = row.mined, row.adapter, row.latest

        def count(v: int | None) -> Text:
            return Text("–" if v is None else f"{v:,}", justify="right")

        if adapter is None:
            name, evidence = Text("base model", style="dim"), Text("")
        else:
            short = adapter.adapter.removeprefix(f"{row.agent}-")
            name, evidence = Text(short), Text(_evidence(adapter.evidence))
        if latest is None:
            training = Text("none", style="dim")
        elif latest.status in ("running", "evaluating") and not latest.alive:
            training = Text("stopped", style="magenta")
        else:
            training = Text(latest.status, style=STATUS_STYLE.get(latest.status, ""))
        if latest is not None and latest.steps:
            training.append(f" {latest.step}/{latest.steps}", style="")
        return (
            Text(row.agent),
            count(mined.train if mined else None),
            count(mined.heldout if mined else None),
            count(mined.tasks if mined else None),
            name,
            evidence,
            training,
        )

    def _show_table(self) -> None:
        assert self.files is not None
        table = self.query_one(DataTable)
        rows = self.files.rows
        empty = self.query_one("#training-empty", Static)
        detail = self.query_one("#training-detail")
        if not rows:
            table.display = detail.display = False
            empty.display = True
            empty.update(self._empty_text())
            self._agents, self._cells, self.selected = [], {}, None
            return
        table.display = detail.display = True
        empty.display = False
        cells = {r.agent: self._row_cells(r) for r in rows}
        agents = list(cells)
        if agents != self._agents:
            table.clear()
            for agent, row in cells.items():
                table.add_row(*row, key=agent)
            self._agents = agents
            if self.selected not in agents:
                self.selected = agents[0]
            table.move_cursor(row=agents.index(self.selected), animate=False)
        else:
            for agent, row in cells.items():
                for (key, _, _), new, old in zip(COLUMNS, row, self._cells[agent], strict=True):
                    if new != old:
                        table.update_cell(agent, key, new, update_width=True)
        self._cells = cells

    def _empty_text(self) -> Text:
        text = Text()
        text.append("No training data yet.\n\n", style="bold")
        text.append("An agent learns from the night's green runs. Mine them into examples with\n\n")
        text.append("  pantheon traces mine", style="bold")
        text.append(
            "\n\nthen pick an agent here and press s (or enter) to train an adapter for it in "
            "the background. It is judged on held-out tasks against the base model, and "
            "promoted only when it does better.\n\n"
        )
        text.append(f"This screen follows {self.files.root if self.files else 'training/'}: ")
        text.append("it fills in by itself.")
        return text

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        table = self.query_one(DataTable)
        if 0 <= table.cursor_row < len(self._agents):
            agent = self._agents[table.cursor_row]
            if agent != self.selected:
                self.selected = agent
                self._show_detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_train()

    # -- the highlighted agent --------------------------------------------------------------

    def _show_detail(self) -> None:
        row = self._row()
        if row is None or self.files is None:
            return
        latest = row.latest
        progress, _ = self.files.progress(latest.id) if latest else (Progress(), False)
        alive = latest.alive if latest else False
        key = (row, progress.offset, alive)
        if key == self._detail_key:
            return
        self._detail_key = key
        self.query_one("#training-detail").border_title = f"{row.agent} · latest training"
        about = self.query_one("#training-about", Static)
        bar_row = self.query_one("#training-bar")
        plot = self.query_one("#training-loss", LossPlot)
        result = self.query_one("#training-result", Static)
        if latest is None:
            about.update(self._no_training(row))
            bar_row.display = plot.display = False
            result.update(self._serving(row))
            return
        about.update(self._about(latest, alive))
        bar_row.display = plot.display = True
        self._show_bar(latest, progress.last)
        plot.points = tuple(progress.points[-MAX_POINTS:])
        plot.empty = "no step yet" if latest.status == "running" else "no step recorded"
        result.update(self._result(row, latest))

    def _no_training(self, row: AgentTraining) -> Text:
        text = Text()
        text.append(f"{row.agent} has not been trained yet.", style="bold")
        mined = row.mined
        if mined is None:
            text.append(" It has no mined data: run pantheon traces mine first.")
        elif mined.train < MIN_EXAMPLES:
            why = ", ".join(f"{n} {k}" for k, n in sorted(mined.left_out.items()))
            text.append(
                f" Not enough data to train: {mined.train} < {MIN_EXAMPLES} green examples"
                + (f" (jobs left out: {why})." if why else ".")
            )
        else:
            text.append(f" Press s to train an adapter on its {mined.train:,} examples.")
        return text

    def _about(self, latest: TrainingState, alive: bool) -> Text:
        text = Text()
        text.append(latest.id, style="bold")
        text.append("  ")
        if latest.status in ("running", "evaluating") and not alive:
            text.append(f"{latest.status}, but its process is gone", style="magenta")
        else:
            text.append(latest.status, style=STATUS_STYLE.get(latest.status, ""))
        text.append(
            f"\nbase model {latest.base_model} · {latest.examples:,} examples · "
            f"{latest.heldout:,} held out",
            style="dim",
        )
        return text

    def _show_bar(self, latest: TrainingState, last: ProgressRow | None) -> None:
        step, steps = _step(latest, last)
        bar = self.query_one("#training-progress", ProgressBar)
        step_text = self.query_one("#training-step", Static)
        eta = self.query_one("#training-eta", Static)
        bar.display = steps > 0
        if steps:
            bar.update(total=steps, progress=step)
            step_text.update(f"step {step}/{steps} ")
        else:
            step_text.update("waiting for the first step")
        if last is None:
            eta.update("")
            return
        parts = []
        if latest.status == "running" and last.eta_s is not None:
            parts.append(f"ETA {age(last.eta_s)}")
        elif latest.status != "running" and last.elapsed_s:
            parts.append(f"took {age(last.elapsed_s)}")
        parts.append(f"loss {last.loss:.3f}")
        parts.append(f"lr {last.lr:.1e}")
        if last.tokens:
            parts.append(f"{last.tokens:,} tokens")
        eta.update("  " + " · ".join(parts))

    def _result(self, row: AgentTraining, latest: TrainingState) -> Text:
        text = Text()
        before, after = latest.heldout_loss_before, latest.heldout_loss_after
        if before is not None or after is not None:
            text.append("held-out loss ")
            text.append("–" if before is None else f"{before:.3f}")
            text.append(" → ")
            text.append("…" if after is None else f"{after:.3f}", style="bold")
            text.append("\n")
        if latest.status == "failed":
            text.append("FAILED: ", style="bold red")
            text.append(f"{latest.error or 'no error recorded'}\n", style="red")
        elif latest.error:  # an evaluation that failed, a training stopped at once
            text.append(f"{latest.error}\n", style="red")
        ev = latest.evaluation
        if ev is not None:
            text.append(f"{ev.tasks} held-out tasks: ")
            text.append(f"base passed {ev.base_passed}, adapter passed {ev.adapter_passed}")
            text.append(f" · b {ev.b} · c {ev.c} · p {ev.p_value:.3g} (α {ev.alpha:g})\n")
            if ev.promoted:
                text.append("✓ promoted", style="bold green")
                text.append(f": {ev.reason}\n", style="green")
            else:
                text.append("✗ not promoted", style="bold red")
                text.append(f": {ev.reason}\n", style="red")
        elif latest.status == "evaluating":
            text.append(
                "evaluating: the base model and the adapter run the held-out tasks…\n",
                style="yellow",
            )
        elif latest.status == "done" and not latest.promote:
            text.append("not evaluated (trained without --promote)\n", style="dim")
        text.append_text(self._serving(row))
        return text

    def _serving(self, row: AgentTraining) -> Text:
        text = Text("serving: ", style="dim")
        if row.adapter is None:
            text.append("the base model (no adapter promoted)", style="dim")
            return text
        text.append(row.adapter.adapter, style="bold")
        evidence = _evidence(row.adapter.evidence)
        if evidence:
            text.append(f"  (passed base → adapter: {evidence})", style="dim")
        return text

    # -- actions ----------------------------------------------------------------------------

    def action_learn(self) -> None:
        self.app.push_screen(
            ConfirmScreen(
                "Run the learn loop?",
                "The night's traces are mined again, then every agent with enough new green "
                "examples is trained in the background (an hour at most each), judged against "
                "the base model on held-out work and promoted only if it does better. The "
                "night keeps running; the console can be closed.",
                yes="Learn",
            ),
            lambda ok: ok and self.console.start_learning(),
        )

    def action_train(self) -> None:
        row = self._row()
        if row is None:
            self.notify(
                "no agent to train yet: mine the night's traces first (pantheon traces mine)",
                severity="warning",
            )
            return
        latest = row.latest
        if latest is not None and latest.alive:
            self.notify(
                f"{row.agent} is training already ({latest.id}, {latest.status}): "
                "wait for it to end",
                severity="warning",
            )
            return
        mined = row.mined
        if mined is None or not mined.train:
            self.notify(
                f"{row.agent} has no mined examples to train on: run pantheon traces mine first",
                severity="warning",
            )
            return
        if mined.train < MIN_EXAMPLES:
            self.notify(
                f"not enough data for {row.agent} ({mined.train} < {MIN_EXAMPLES} green "
                "examples): mine more nights first",
                severity="warning",
            )
            return
        agent = row.agent
        self.app.push_screen(
            ConfirmScreen(
                f"Train {agent}?",
                f"An adapter for {agent} is trained on {mined.train:,} examples in the "
                f"background, then judged against the base model on {mined.tasks:,} held-out "
                "tasks and promoted only if it does better. The night keeps running; "
                "the console can be closed.",
                yes="Train",
            ),
            lambda ok: ok and self.console.start_training(agent),
        )
