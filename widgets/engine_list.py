"""One line per engine that drains the artifacts directory: its host and pid, its role, what it
runs, the model servers it asks and when it last beat (``SILENT`` when it stopped beating).

Shown only when more than one engine drains the night, or one went silent: a night of one
engine says all of this in the tiles above it.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

__all__ = ["EngineList"]


class EngineList(Static):
    """The engines' heartbeat lines; hidden for one engine that beats."""

    DEFAULT_CSS = """
    EngineList {
        display: none;
        height: auto;
        padding: 0 1;
    }
    EngineList.-shown { display: block; }
    """

    lines: reactive[tuple[str, ...]] = reactive(())
    """One line per engine (:func:`pantheon.core.observe.engines.engine_lines`)."""

    def watch_lines(self, lines: tuple[str, ...]) -> None:
        shown = len(lines) > 1 or any("SILENT" in line for line in lines)
        self.set_class(shown, "-shown")
        if shown:
            text = Text("engines", style="dim")
            for line in lines:
                text.append("\n")
                text.append(line, style="bold red" if "SILENT" in line else "")
            self.update(text)
