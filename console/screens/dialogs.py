"""Small modal screens: a yes/no question and the help page."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Markdown, Static

__all__ = ["ConfirmScreen", "HelpScreen"]


class ConfirmScreen(ModalScreen[bool]):
    """Ask before a change to the night; y / enter says yes, n / escape says no."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, title: str, body: str, *, yes: str = "Yes", no: str = "Cancel") -> None:
        super().__init__()
        self.title_text = title
        self.body = body
        self.yes = yes
        self.no = no

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.title_text, id="dialog-title", markup=False)
            yield Static(self.body, id="dialog-body", markup=False)
            with Horizontal(id="dialog-buttons"):
                yield Button(f"{self.yes} (y)", variant="warning", id="yes")
                yield Button(f"{self.no} (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


HELP = """\
# Pantheon console

The console watches the artifacts directory. Closing it never touches the night:
`pantheon console` attaches again at any time.

## Keys

| key | does |
| --- | --- |
| `enter` | open the run under the cursor (its nodes, files and model calls) |
| `/` | filter runs: `status:failed`, `flow:docops`, `agent:codegen`, or any words |
| `s` | cycle the status filter: running, failed, done, queued, all |
| `escape` | clear the filter; in a run, go back |
| `m` | pause or resume merges (asks first) |
| `p` | pause or resume the queue (pausing asks first) |
| `+` / `-` | run one job more or fewer at once (concurrency c) |
| `r` | the morning review: the changes that wait, with their diff, tests and reviews |
| `t` | training: each agent's mined data, promoted adapter and latest training |
| `S` | stop the night: jobs in flight finish, the rest wait (asks first; again: cancel them) |
| `ctrl+p` | the command palette: every action by name |
| `?` | this page |
| `q` | quit the console (the night goes on) |

In a run: `o` output, `i` input, `e` error, `c` model calls; arrows pick the node.

In the review: `a` merges the change (a real git merge into its target branch; a conflict is
refused with its files), `x` rejects it (its branch is kept as `pantheon/rejected/...`), `u`
reverts a merged one (a new commit on its target branch undoes its merge), `o` opens its run,
`w` shows all changes or only the waiting ones, `f` the failed runs. Each asks first, and every
decision is written to `decisions.jsonl`, which the report and the trainer read: a rejected or
reverted change never becomes training data.

In training: arrows pick the agent; below it, its latest training's progress, loss curve and
evaluation. `s` (or `enter`) trains an adapter for it in the background, after asking: the night
keeps running, and the console can be closed. The adapter is judged on held-out tasks against
the base model (McNemar's exact test: *b* tasks only the base passed, *c* only the adapter) and
promoted only when it does better. Mine the examples first with `pantheon traces mine`.

## The figures

- **queue**: jobs waiting; *drain* is the time to empty the queue at the present pace.
- **busy**: jobs running now, and c, the jobs the engine may run at once
  (→ the c the queue math recommends).
- **ρ**: utilization λ / (c μ) over the last minutes. Above 0.8 (yellow) jobs wait
  noticeably; at 1 or more (red) the queue grows without bound. *P(w)* is Erlang C,
  the chance a new job has to wait.
- **batch**: requests the model server decodes together. On a GPU server (vLLM) a batch
  under 8 (yellow) leaves most of the GPU idle: raise c.
- **tok/s**: generated tokens per second (*in*: prompt tokens per second, and the share of
  them the server took from its prefix cache, by its own count, where it gives one).
- **κ**: Cohen's κ between the two reviewers over recent review pairs, and the share of
  verdicts that pass. Under 0.6 (red) the reviewers disagree too often to trust, and the engine
  pauses merges by itself. When neither reviewer ever failed anything κ is unknown (yellow,
  "no disagreement seen"): that is no evidence of agreement.
- **canary**: planted defects the reviewers caught, of those they judged. One in N reviewed
  changes is also planted again with a known defect (a fix with one untested input answered
  by rote, a special-cased test input, an edited test, a cut or borrowed description) on a
  branch nothing merges. Under 80 % caught is yellow, under 50 % red; when the reviewers pass
  more than half (over at least 5) the engine pauses merges — unless the reviewers'
  calibration (`pantheon reviewers calibrate`) measured them as carrying no information:
  then the tile reads "gate blind" and merges are not paused on canaries missed by chance.

Each tile's sparkline is its last hour.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "app.pop_screen", "Close"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Markdown(HELP)
