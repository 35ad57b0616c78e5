"""The learn loop: each agent's mined data, promoted adapter and latest training; train one.

The screen reads ``training/`` and ``adapters/registry.json`` once a second, and only what
changed since (:class:`~pantheon.console.training_files.TrainingFiles`).
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Header, ProgressBar, Static

from pantheon.console.format import age
from pantheon.console.training_files import MAX_POINTS, Progress, TrainingFiles
from pantheon.console.training_text import (
    about_text,
    empty_text,
    no_training_text,
    plural,
    problem_line,
    result_text,
    row_cells,
    serving_text,
)
from pantheon.core.learn.files import MIN_EXAMPLES, AgentTraining, ProgressRow, TrainingState
from pantheon.widgets.loss_plot import LossPlot

from .base import ConsoleScreen
from .dialogs import ConfirmScreen

__all__ = ["TrainingScreen"]

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
        head.append(plural(len(rows), "agent"), style="bold")
        head.append(f" · {plural(promoted, 'adapter')} promoted · ")
        head.append(f"{running} training now", style="bold yellow" if running else "")
        head.append("  ·  s or enter: train the highlighted agent", style="dim")
        lines = "\n".join(f"⚠ {problem_line(p)}" for p in self.files.problems)
        if (head, lines) == self._head:
            return
        self._head = (head, lines)
        self.query_one("#training-head", Static).update(head)
        problems = self.query_one("#training-problems", Static)
        problems.display = bool(lines)
        problems.update(Text(lines, style="red"))

    def _show_table(self) -> None:
        assert self.files is not None
        table = self.query_one(DataTable)
        rows = self.files.rows
        empty = self.query_one("#training-empty", Static)
        detail = self.query_one("#training-detail")
        if not rows:
            table.display = detail.display = False
            empty.display = True
            empty.update(empty_text(self.files.root if self.files else "training/"))
            self._agents, self._cells, self.selected = [], {}, None
            return
        table.display = detail.display = True
        empty.display = False
        cells = {r.agent: row_cells(r) for r in rows}
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
            about.update(no_training_text(row))
            bar_row.display = plot.display = False
            result.update(serving_text(row))
            return
        about.update(about_text(latest, alive))
        bar_row.display = plot.display = True
        self._show_bar(latest, progress.last)
        plot.points = tuple(progress.points[-MAX_POINTS:])
        plot.empty = "no step yet" if latest.status == "running" else "no step recorded"
        result.update(result_text(row, latest))

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
