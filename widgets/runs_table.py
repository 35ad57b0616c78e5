"""The live table of runs: flow, job, the node running now, status, age — updated in place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import DataTable

__all__ = ["RunRow", "RunsTable"]

STATUS_STYLE = {
    "running": "bold yellow",
    "failed": "bold red",
    "done": "green",
    "queued": "dim",
    "unreadable": "bold magenta",
}

COLUMNS = (
    ("job", "job", 5),
    ("flow", "flow", 9),
    ("status", "status", 7),
    ("now", "node / agent", 26),
    ("age", "age", 6),
    ("note", "note", 160),
)
"""(key, label, width): fixed widths, so an update never re-measures the table."""


@dataclass(frozen=True, slots=True)
class RunRow:
    """One row as shown; the parent builds these, the table only draws them."""

    key: str
    """The run's folder name (``<flow>-<job id>``)."""
    job: int
    flow: str
    status: str
    now: str
    age: str
    note: str

    def cells(self) -> tuple[object, ...]:
        return (
            Text(str(self.job), justify="right"),
            self.flow,
            Text(self.status, style=STATUS_STYLE.get(self.status, "")),
            self.now,
            Text(self.age, justify="right"),
            Text(self.note, style="red" if self.status in ("failed", "unreadable") else "dim"),
        )


class RunsTable(DataTable):
    """A DataTable of :class:`RunRow` that changes only the cells that changed.

    Rows are slots: slot *i* shows the *i*-th run given to :meth:`show`. When a run moves (it
    finished, so it goes from the running group to the top of the finished ones), only the
    cells whose text changed are rewritten, and columns have fixed widths, so a night that
    reorders its table twice a second never rebuilds or re-measures it.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open run", show=True)
    ]

    DEFAULT_CSS = """
    RunsTable { height: 1fr; }
    """

    class Opened(Message):
        """The operator asked to open a run."""

        def __init__(self, run: str) -> None:
            super().__init__()
            self.run = run

    def __init__(
        self, *, name: str | None = None, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, name=name, id=id, classes=classes)
        self._rows: list[RunRow] = []

    def on_mount(self) -> None:
        for key, label, width in COLUMNS:
            self.add_column(label, key=key, width=width)

    @property
    def current_run(self) -> str | None:
        """The run under the cursor."""
        if not self._rows or not 0 <= self.cursor_row < len(self._rows):
            return None
        return self._rows[self.cursor_row].key

    def shown_rows(self) -> list[tuple[str, RunRow]]:
        """(slot key, row) of every row shown."""
        return [(f"slot-{i}", row) for i, row in enumerate(self._rows)]

    def set_age(self, slot: str, age: str) -> None:
        i = int(slot.removeprefix("slot-"))
        row = self._rows[i]
        if row.age != age:
            self._rows[i] = RunRow(row.key, row.job, row.flow, row.status, row.now, age, row.note)
            self.update_cell(slot, "age", Text(age, justify="right"))

    def show(self, rows: Sequence[RunRow]) -> None:
        """Make the table show ``rows`` in this order, keeping the cursor on its run."""
        current = self.current_run
        old = self._rows
        for i, row in enumerate(rows):
            slot = f"slot-{i}"
            if i >= len(old):
                self.add_row(*row.cells(), key=slot)
                continue
            before = old[i]
            if before == row:
                continue
            for (col, _, _), new, prev in zip(COLUMNS, row.cells(), before.cells(), strict=True):
                if new != prev:
                    self.update_cell(slot, col, new)
        for i in range(len(rows), len(old)):
            self.remove_row(f"slot-{i}")
        self._rows = list(rows)
        if current is not None:
            where = next((i for i, r in enumerate(rows) if r.key == current), None)
            if where is not None and where != self.cursor_row:
                self.move_cursor(row=where, animate=False, scroll=False)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        run = self.current_run
        if run is not None:
            self.post_message(self.Opened(run))
