"""The one progress line of the terminal: redrawn on a terminal, a tenth at a time in a log."""

from __future__ import annotations

import io

from pantheon.console.commands.common import progress_printer
from pantheon.console.learn_progress import ProgressLines


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_download_in_a_log_is_a_line_a_tenth():
    log = io.StringIO()
    show = progress_printer(log)
    for done in range(0, 101):
        show(done * 10**6, 100 * 10**6, "smollm2")
    lines = log.getvalue().splitlines()
    assert len(lines) == 11
    assert lines[-1] == "smollm2: [#########################] 100% 100/100 MB"


def test_on_a_terminal_the_line_is_redrawn_in_place_and_ended_once():
    term = Terminal()
    bar = ProgressLines(term)

    class Row:
        steps, loss, lr, tokens, eta_s = 4, 0.25, 1e-4, 512, 3.0

    for step in range(1, 5):
        row = Row()
        row.step = step
        bar.step(row)
    out = term.getvalue()
    assert out.count("\r") == 4 and out.endswith("\n") and out.count("\n") == 1
    assert "step 4/4 [#########################] 100%  loss 0.2500" in out
