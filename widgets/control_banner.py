"""A banner that says what is paused, why, and since when; hidden when nothing is.

A ``control.json`` that cannot be used pauses the queue and merges by itself (they fail closed):
the banner then says that, and why, in place of the two pauses it makes.
"""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from pantheon.core.store.control import UNUSABLE_EFFECT, Control

__all__ = ["ControlBanner"]


def _since(when: datetime | None) -> str:
    return f" since {when.astimezone().strftime('%H:%M:%S')}" if when else ""


class ControlBanner(Static):
    """Shows the paused merges and the paused queue from ``control.json``."""

    DEFAULT_CSS = """
    ControlBanner {
        display: none;
        height: auto;
        padding: 0 1;
        background: $warning-muted;
        color: $text;
    }
    ControlBanner.-shown { display: block; }
    ControlBanner.-error { background: $error-muted; }
    """

    control: reactive[Control | None] = reactive(None, always_update=True)
    """The controls in force."""
    problem: reactive[str | None] = reactive(None)
    """Why ``control.json`` could not be used, if it could not."""

    _shown = ""

    def _lines(self) -> Text:
        text = Text()
        if self.problem:
            text.append("QUEUE AND MERGES PAUSED", style="bold")
            text.append(f" — {self.problem}; {UNUSABLE_EFFECT} (or deleted, for the defaults)")
            if self.control is not None:
                text.append(_since(self.control.queue_paused_since))
            return text
        c = self.control
        if c is not None and c.merges_paused:
            text.append("MERGES PAUSED", style="bold")
            text.append(f" — {c.merges_paused_reason or 'by the operator'}")
            text.append(_since(c.merges_paused_since))
            text.append(" · changes wait for the morning review")
        if c is not None and c.queue_paused:
            if text:
                text.append("\n")
            text.append("QUEUE PAUSED", style="bold")
            text.append(f" — {c.queue_paused_reason or 'by the operator'}")
            text.append(_since(c.queue_paused_since))
            text.append(" · running jobs finish, no new ones start")
        return text

    def _show(self) -> None:
        text = self._lines()
        if text.plain == self._shown:
            return  # the controls were rewritten, nothing to see changed: no redraw
        lines_changed = text.plain.count("\n") != self._shown.count("\n") or not self._shown
        self._shown = text.plain
        self.update(text, layout=lines_changed)
        self.set_class(bool(text), "-shown")
        self.set_class(bool(self.problem), "-error")

    def watch_control(self) -> None:
        self._show()

    def watch_problem(self) -> None:
        self._show()
