"""One progress line for the terminal: redrawn in place on a terminal, a line every tenth of the
way in a log (a night's output, a pipe). Model downloads, training steps and judged tasks all
show their progress through it."""

from __future__ import annotations

import sys

__all__ = ["ProgressLine", "bar"]


def bar(pct: int) -> str:
    """``[######-------------------]``: 25 cells."""
    return "[" + "#" * (pct // 4) + "-" * (25 - pct // 4) + "]"


class ProgressLine:
    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last: int | None = None

    def show(self, line: str, *, tenth: int | None = None, final: bool = False) -> None:
        """On a terminal, redraw ``line`` in place (and end it when ``final``). In a log, write
        it when ``tenth`` (the tenth of the way it is at) is new, or always when it is None,
        and the final line."""
        if not self.tty and tenth is not None and tenth == self._last and not final:
            return
        self._last = tenth
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        if self.tty and final:
            self.stream.write("\n")
        self.stream.flush()
