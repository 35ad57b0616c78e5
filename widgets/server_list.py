"""One line per model server: whether it answers, its calls, batch and tokens/s (and its model,
where the servers are of several: the writers' and the others').

Shown only when the engine talks to more than one server (a sample with ``servers`` rows); a
night on one server says all of this in the tiles above it.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

__all__ = ["ServerList", "server_table"]


def _num(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "–"


def server_table(rows: list[dict[str, Any]]) -> Table:
    """The servers as a borderless table: health, calls in flight and answered, batch,
    generated and prompt tokens/s (the server's own figures), and why a figure is missing."""
    table = Table(box=None, padding=(0, 1), show_edge=False, expand=True, header_style="dim")
    for name, justify in (
        ("server", "left"),
        ("health", "left"),
        ("in flight", "right"),
        ("calls", "right"),
        ("batch", "right"),
        ("tok/s", "right"),
        ("prompt/s", "right"),
        ("", "left"),
    ):
        # the figures keep their width; the note takes what is left, cut short if it must
        table.add_column(
            name,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=True,
            overflow="ellipsis",
            ratio=1 if name == "" else None,
        )
    for row in rows:
        up = bool(row.get("up"))
        health = Text("up", style="green") if up else Text("DOWN", style="bold red")
        why = row.get("why") if up else "its calls go to the others until it answers"
        name = Text(str(row.get("where", "?")))
        if row.get("model"):
            name.append(f" {row['model']}", style="dim")
        table.add_row(
            name,
            health,
            str(row.get("in_flight") if row.get("in_flight") is not None else "–"),
            str(row.get("calls", 0)),
            _num(row.get("batch")) if up else "–",
            _num(row.get("generated")) if up else "–",
            _num(row.get("prompt"), 0) if up else "–",
            Text(str(why or ""), style="dim"),
        )
    return table


class ServerList(Static):
    """The servers of the last sample; hidden when there are none."""

    DEFAULT_CSS = """
    ServerList {
        display: none;
        height: auto;
        padding: 0 1;
    }
    ServerList.-shown { display: block; }
    """

    rows: reactive[tuple[dict[str, Any], ...]] = reactive(())
    """The ``servers`` rows of the engine's last metrics sample."""

    def watch_rows(self, rows: tuple[dict[str, Any], ...]) -> None:
        self.set_class(bool(rows), "-shown")
        if rows:
            self.update(server_table(list(rows)))
