"""The learn commands' terminal: the training and judging progress lines, and the Ctrl-C that
stops a training after its step."""

from __future__ import annotations

import signal
import sys
import threading

from pantheon.console.format import age
from pantheon.console.progress import ProgressLine, bar

__all__ = ["ProgressLines", "progress_bar", "stop_after_step"]


class ProgressLines:
    """A one-line progress bar on a terminal; a line every tenth of the way otherwise."""

    def __init__(self, stream=None) -> None:
        self.line = ProgressLine(stream)
        self.stream = self.line.stream
        self.tty = self.line.tty

    def step(self, row) -> None:
        pct = int(row.step * 100 / row.steps) if row.steps else 100
        eta = age(row.eta_s) if row.eta_s is not None else "?"
        text = (
            f"step {row.step}/{row.steps} {bar(pct)} {pct:3d}%  loss {row.loss:.4f}  "
            f"lr {row.lr:.2e}  {row.tokens:,} tokens  eta {eta}"
        )
        self.line.show(text, tenth=pct // 10, final=row.step == row.steps)

    def task(self, result, done: int, total: int) -> None:
        mark = {(True, True): "both", (False, False): "neither"}.get(
            (result.base, result.adapter), "adapter only" if result.adapter else "base only"
        )
        self.line.show(f"judged {done}/{total}: {result.run}: {mark} passed", final=done == total)


def stop_after_step() -> threading.Event:
    """Ctrl-C or SIGTERM once: the event is set (the training finishes its step and keeps a
    checkpoint); twice: KeyboardInterrupt, at once."""
    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after this step (again to stop at once)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def progress_bar(stream=None) -> ProgressLines:
    """The training and judging progress lines of the terminal (or of a log)."""
    return ProgressLines(stream)
