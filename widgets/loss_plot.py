"""The training loss of the last steps, as a bar chart of eighth blocks (▁▂▃▄▅▆▇█)."""

from __future__ import annotations

import math
from typing import ClassVar

from rich.text import Text
from textual.app import RenderResult
from textual.reactive import reactive
from textual.widget import Widget

__all__ = ["LossPlot"]

BLOCKS = " ▁▂▃▄▅▆▇█"
MAX_COLUMNS_PER_STEP = 4


def _label(value: float) -> str:
    return f"{value:.3g}"


class LossPlot(Widget):
    """One bar per step (wider when few steps fit), from the lowest loss shown to the highest;
    both are written on the left, and the steps shown underneath. A step whose loss is not a
    number (a diverged training) is a gap.

    The parent sets ``points``; the plot draws the last ones that fit its width.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {"loss-plot--bar", "loss-plot--axis"}

    DEFAULT_CSS = """
    LossPlot {
        height: 8;
        border: round $panel-lighten-2;
        border-title-color: $text-muted;
        padding: 0 1;
    }
    LossPlot > .loss-plot--bar { color: $primary; }
    LossPlot > .loss-plot--axis { color: $text-muted; }
    """

    points: reactive[tuple[tuple[int, float], ...]] = reactive(tuple)
    """(step, loss) pairs, oldest first."""
    empty: reactive[str] = reactive("no step yet")
    """What the plot says while there is no point."""

    def render(self) -> RenderResult:
        width, height = self.size
        axis = self.get_component_rich_style("loss-plot--axis")
        if not self.points or width < 12:
            return Text(self.empty, style=axis)
        label_w, shown, lo, hi = 0, self.points, 0.0, 0.0
        for _ in range(12):  # the labels' width, and so the points that fit, settle at once
            shown = self.points[-(width - label_w - 1) :]
            finite = [v for _, v in shown if math.isfinite(v)]
            if not finite:
                return Text("the loss is not a number (NaN or infinite)", style=axis)
            lo, hi = min(finite), max(finite)
            need = max(len(_label(lo)), len(_label(hi)))
            if need <= label_w:
                break
            label_w = need
        bar = self.get_component_rich_style("loss-plot--bar")
        rows = max(1, height - 1)  # the last line names the steps
        k = max(1, min(MAX_COLUMNS_PER_STEP, (width - label_w - 1) // len(shown)))
        levels = rows * 8
        heights = [
            0
            if not math.isfinite(v)
            else 1 + round((v - lo) / (hi - lo) * (levels - 1))
            if hi > lo
            else levels // 2
            for _, v in shown
        ]
        text = Text(no_wrap=True, overflow="crop")
        for r in range(rows):
            label = _label(hi) if r == 0 else _label(lo) if r == rows - 1 else ""
            text.append(label.rjust(label_w) + " ", axis)
            base = (rows - 1 - r) * 8
            text.append("".join(BLOCKS[min(8, max(0, h - base))] * k for h in heights), bar)
            text.append("\n")
        first, last = f"step {shown[0][0]}", str(shown[-1][0])
        used = len(shown) * k
        if used >= len(first) + len(last) + 1:
            steps = first + last.rjust(used - len(first))
        else:
            steps = f"steps {shown[0][0]}–{shown[-1][0]}"
        text.append(" " * (label_w + 1) + steps, axis)
        return text
