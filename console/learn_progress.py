"""The learn commands' terminal: the training and judging progress lines, and the Ctrl-C that
stops a training after its step."""

from __future__ import annotations

import signal
import sys
import threading

from pantheon.console.format import age

__all__ = ["ProgressLines", "progress_bar", "stop_after_step"]


class ProgressLines:
    """A one-line progress bar on a terminal; a line every tenth of the way otherwise."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last = -1

    def step(self, row) -> None:
        pct = int(row.step * 100 / row.steps) if row.steps else 100
        if not self.tty and pct // 10 == self.last and row.step != row.steps:
            return
        self.last = pct // 10
        bar = "#" * (pct // 4) + "-" * (25 - pct // 4)
        eta = age(row.eta_s) if row.eta_s is not None else "?"
        line = (
            f"step {row.step}/{row.steps} [{bar}] {pct:3d}%  loss {row.loss:.4f}  "
            f"lr {row.lr:.2e}  {row.tokens:,} tokens  eta {eta}"
        )
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        if self.tty and row.step == row.steps:
            self.stream.write("\n")
        self.stream.flush()

    def task(self, result, done: int, total: int) -> None:
        mark = {(True, True): "both", (False, False): "neither"}.get(
            (result.base, result.adapter), "adapter only" if result.adapter else "base only"
        )
        line = f"judged {done}/{total}: {result.run}: {mark} passed"
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        if self.tty and done == total:
            self.stream.write("\n")
        self.stream.flush()


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
