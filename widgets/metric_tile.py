"""A figure of the night: its value, a line of detail, and a sparkline of its recent past."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Sparkline, Static

__all__ = ["MetricTile"]


class MetricTile(Widget):
    """One figure (queue depth, ρ, κ...) with a sparkline; ``level`` colours it past a threshold.

    The parent sets ``value``, ``detail``, ``history`` and ``level``; the tile only shows them.
    """

    DEFAULT_CSS = """
    MetricTile {
        height: 5;
        border: round $panel-lighten-2;
        border-title-color: $text-muted;
        padding: 0;
    }
    MetricTile > .tile--value { text-style: bold; height: 1; }
    MetricTile > .tile--detail { color: $text-muted; height: 1; }
    MetricTile > Sparkline { height: 1; }
    MetricTile.-warn { border: round $warning; }
    MetricTile.-warn > .tile--value { color: $warning; }
    MetricTile.-bad { border: round $error; }
    MetricTile.-bad > .tile--value { color: $error; }
    """

    value: reactive[str] = reactive("–")
    """The figure, formatted."""
    detail: reactive[str] = reactive("")
    """A short line under it (a second figure, a unit, why it is missing)."""
    level: reactive[str] = reactive("")
    """``""``, ``"warn"`` or ``"bad"``: how far past its threshold the figure is."""
    history: reactive[tuple[float, ...]] = reactive(tuple)
    """The figure's recent values, oldest first, for the sparkline."""

    def __init__(
        self,
        title: str,
        *,
        tooltip: str | None = None,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.border_title = title
        if tooltip:
            self.tooltip = tooltip

    def compose(self) -> ComposeResult:
        yield Static(self.value, classes="tile--value", markup=False)
        yield Static(self.detail, classes="tile--detail", markup=False)
        yield Sparkline(list(self.history) or None)

    def watch_value(self, value: str) -> None:
        if self.is_mounted:
            self.query_one(".tile--value", Static).update(value, layout=False)

    def watch_detail(self, detail: str) -> None:
        if self.is_mounted:
            self.query_one(".tile--detail", Static).update(detail, layout=False)

    def watch_level(self, old: str, new: str) -> None:
        if old:
            self.remove_class(f"-{old}")
        if new:
            self.add_class(f"-{new}")

    def watch_history(self, history: Sequence[float]) -> None:
        if self.is_mounted:
            self.query_one(Sparkline).data = list(history) or None

    def on_mount(self) -> None:
        self.watch_value(self.value)
        self.watch_detail(self.detail)
        self.watch_history(self.history)
