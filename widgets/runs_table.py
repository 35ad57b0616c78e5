"""The live table of runs: flow, job, the node running now, status, age — a virtual table.

Built on Textual's Line API (a ``ScrollView``) rather than ``DataTable``: only the lines on
screen are drawn, each row's line is cached under the row's own content, and a row that did not
change is never drawn again. A night that reorders its table twice a second with 500 rows in it
costs the few lines that changed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

__all__ = ["COLUMNS", "RunRow", "RunsTable"]

COLUMNS = (
    ("job", "job", 5, "right"),
    ("flow", "flow", 9, "left"),
    ("status", "status", 7, "left"),
    ("now", "node / agent", 26, "left"),
    ("age", "age", 6, "right"),
    ("note", "note", 0, "left"),
)
"""(key, label, width, align); the last column takes the rest of the line."""

STATUSES = ("running", "failed", "done", "queued", "unreadable")


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

    def cells(self) -> tuple[str, ...]:
        return (str(self.job), self.flow, self.status, self.now, self.age, self.note)


def _fit(text: str, width: int, align: str) -> str:
    if len(text) > width:
        return text[: max(0, width - 1)] + "…" if width > 1 else text[:width]
    return text.rjust(width) if align == "right" else text.ljust(width)


class RunsTable(ScrollView, can_focus=True):
    """A scrolling table of :class:`RunRow` with a cursor; enter opens the run under it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Open run"),
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "cursor(-1000000000)", "First", show=False),
        Binding("end", "cursor(1000000000)", "Last", show=False),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "runs-table--header",
        "runs-table--cursor",
        "runs-table--odd",
        *(f"runs-table--{s}" for s in STATUSES),
        "runs-table--note-bad",
        "runs-table--note",
    }

    DEFAULT_CSS = """
    RunsTable { height: 1fr; background: $surface; }
    RunsTable > .runs-table--header { text-style: bold; background: $panel; }
    RunsTable > .runs-table--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
        text-style: bold;
    }
    RunsTable:blur > .runs-table--cursor { background: $block-cursor-blurred-background; }
    RunsTable > .runs-table--odd { background: $surface-lighten-1 30%; }
    RunsTable > .runs-table--running { color: $warning; text-style: bold; }
    RunsTable > .runs-table--failed { color: $error; text-style: bold; }
    RunsTable > .runs-table--done { color: $success; }
    RunsTable > .runs-table--queued { color: $text-muted; }
    RunsTable > .runs-table--unreadable { color: $accent; text-style: bold; }
    RunsTable > .runs-table--note-bad { color: $error; }
    RunsTable > .runs-table--note { color: $text-muted; }
    """

    cursor: reactive[int] = reactive(0)
    """The index of the row under the cursor."""

    class Opened(Message):
        """The operator asked to open a run."""

        def __init__(self, run: str) -> None:
            super().__init__()
            self.run = run

    def __init__(
        self, *, name: str | None = None, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.rows: list[RunRow] = []
        """The rows shown, in order."""
        self._lines: OrderedDict[tuple[object, ...], Strip] = OrderedDict()

    # -- the parent's API -------------------------------------------------------------------

    @property
    def current_run(self) -> str | None:
        """The run under the cursor."""
        return self.rows[self.cursor].key if 0 <= self.cursor < len(self.rows) else None

    def show(self, rows: Sequence[RunRow]) -> None:
        """Show ``rows`` in this order, keeping the cursor on its run."""
        current = self.current_run
        changed = [
            i for i, row in enumerate(rows) if i >= len(self.rows) or self.rows[i] != row
        ] + list(range(len(rows), len(self.rows)))
        self.rows = list(rows)
        self.virtual_size = Size(self.size.width, len(self.rows) + 1)
        where = next((i for i, r in enumerate(self.rows) if r.key == current), None)
        if where is not None:
            self.set_reactive(RunsTable.cursor, where)
        self.cursor = min(self.cursor, max(0, len(self.rows) - 1))
        top = int(self.scroll_offset.y)
        on_screen = [i for i in changed if top <= i < top + self.size.height]
        if on_screen:
            self.refresh()

    def set_age(self, index: int, age: str, note: str | None = None) -> None:
        """Change one row's age, and its note when given (the clock moved)."""
        row = self.rows[index]
        note = row.note if note is None else note
        if row.age != age or row.note != note:
            self.rows[index] = replace(row, age=age, note=note)
            self._refresh_row(index)

    # -- drawing ----------------------------------------------------------------------------

    def _refresh_row(self, index: int) -> None:
        y = index + 1 - int(self.scroll_offset.y)
        if 0 < y < self.size.height:
            self.refresh(Region(0, y, self.size.width, 1))

    def watch_cursor(self, old: int, new: int) -> None:
        self._refresh_row(old)
        self._refresh_row(new)
        self._scroll_to_cursor()

    def _scroll_to_cursor(self) -> None:
        top = int(self.scroll_offset.y)
        visible = max(1, self.size.height - 1)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + visible:
            self.scroll_to(y=self.cursor - visible + 1, animate=False)

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.rows) + 1)
        self._lines.clear()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._lines.clear()

    def _line(self, cells: tuple[str, ...], styles: list[Style], base: Style, width: int) -> Strip:
        segments = []
        used = 0
        for (_, _, w, align), text, style in zip(COLUMNS, cells, styles, strict=True):
            w = w or max(0, width - used - 1)
            segments.append(Segment(" ", base))
            segments.append(Segment(_fit(text, w, align), base + style))
            used += w + 1
        return Strip(segments).adjust_cell_length(width, base)

    def _fg(self, component: str) -> Style:
        """A component's colour and weight only: the row's background stays the row's."""
        style = self.get_component_rich_style(component)
        return Style(color=style.color, bold=style.bold)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if y == 0:
            header = self.get_component_rich_style("runs-table--header")
            key: tuple[object, ...] = ("header", width, header)
            if key not in self._lines:
                labels = tuple(label for _, label, _, _ in COLUMNS)
                self._lines[key] = self._line(labels, [Style()] * len(COLUMNS), header, width)
            return self._lines[key]
        index = int(self.scroll_offset.y) + y - 1
        if index >= len(self.rows):
            return Strip.blank(width, self.rich_style)
        row = self.rows[index]
        cursor = index == self.cursor
        key = (row, width, cursor, index % 2, self.has_focus)
        line = self._lines.get(key)
        if line is None:
            base = self.rich_style
            if index % 2:
                base = base + self.get_component_rich_style("runs-table--odd")
            if cursor:
                base = base + self.get_component_rich_style("runs-table--cursor")
            bad = row.status in ("failed", "unreadable")
            status = self._fg(f"runs-table--{row.status}") if row.status in STATUSES else Style()
            note = self._fg("runs-table--note-bad" if bad else "runs-table--note")
            styles = [Style(), Style(), status, Style(), Style(), note]
            if cursor:  # the cursor's own colours win, so the row stays readable
                styles = [Style(bold=s.bold) for s in styles]
            line = self._line(row.cells(), styles, base, width)
            self._lines[key] = line
            if len(self._lines) > 2000:
                self._lines.popitem(last=False)
        return line

    # -- keys and mouse ---------------------------------------------------------------------

    def action_cursor(self, step: int) -> None:
        if self.rows:
            self.cursor = max(0, min(len(self.rows) - 1, self.cursor + step))

    def action_page(self, direction: int) -> None:
        self.action_cursor(direction * max(1, self.size.height - 2))

    def action_open(self) -> None:
        run = self.current_run
        if run is not None:
            self.post_message(self.Opened(run))

    def on_click(self, event: events.Click) -> None:
        index = int(self.scroll_offset.y) + event.y - 1
        if 0 <= index < len(self.rows) and event.y > 0:
            if index == self.cursor and event.chain >= 2:
                self.action_open()
            self.cursor = index

    def on_focus(self) -> None:
        self._lines.clear()
        self.refresh()

    def on_blur(self) -> None:
        self._lines.clear()
        self.refresh()
