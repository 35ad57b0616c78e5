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
    ("job", "job"),
    ("flow", "flow"),
    ("status", "status"),
    ("now", "node / agent"),
    ("age", "age"),
    ("note", "note"),
)


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
    """A DataTable of :class:`RunRow`; :meth:`show` changes only what changed."""

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
        self._shown: dict[str, RunRow] = {}
        self._order: list[str] = []

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    @property
    def current_run(self) -> str | None:
        """The run under the cursor."""
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]

    def show(self, rows: Sequence[RunRow]) -> None:
        """Make the table show ``rows`` in this order, keeping the cursor on its run."""
        order = [r.key for r in rows]
        if order == self._order:
            for row in rows:
                old = self._shown.get(row.key)
                if old == row:
                    continue
                new_cells, old_cells = row.cells(), old.cells() if old else ()
                for (col, _), new, prev in zip(COLUMNS, new_cells, old_cells, strict=False):
                    if str(new) != str(prev) or col == "status":
                        self.update_cell(row.key, col, new, update_width=True)
                self._shown[row.key] = row
            return
        current = self.current_run
        self.clear()
        for row in rows:
            self.add_row(*row.cells(), key=row.key)
        self._shown = {r.key: r for r in rows}
        self._order = order
        if current in self._shown:
            self.move_cursor(row=order.index(current), animate=False, scroll=False)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        run = self.current_run
        if run is not None:
            self.post_message(self.Opened(run))
