"""One run: its nodes with their status, and each node's input, output, error and model calls."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Footer, Header, OptionList, Static, TabbedContent, TabPane
from textual.widgets.option_list import Option

from pantheon.console.messages import NightChanged
from pantheon.core.views.night import NodeView, RunView, load_run
from pantheon.widgets.json_view import JsonView

from .base import ConsoleScreen

__all__ = ["RunDetailScreen", "call_parts"]

NODE_MARK = {
    "done": ("✓", "green"),
    "skipped": ("✓", "green"),
    "failed": ("✗", "bold red"),
    "running": ("▶", "bold yellow"),
    "pending": ("·", "dim"),
}


def call_parts(node: NodeView) -> list[tuple[str, Any]]:
    """A node's model calls as titled parts: the figures, then messages, reply, parsed value."""
    parts: list[tuple[str, Any]] = []
    previous = None
    for i, call in enumerate(node.calls, start=1):
        if call.data is None:
            parts.append((f"call {i}: unreadable", call.problem or ""))
            continue
        d = call.data
        candidate = d.get("kind") == "candidate"
        what = (
            f"candidate {int(d.get('candidate') or 0) + 1} · T {d.get('temperature')} · "
            f"seed {d.get('seed')} · tests {'passed' if d.get('tests_passed') else 'failed'}"
            + (" · KEPT" if d.get("chosen") else "")
            if candidate
            else f"call {i}" + (f" · step {d['step']}" if d.get("step") else "")
        )
        head = (
            what
            + f" · {d.get('prompt_tokens', '?')}+{d.get('completion_tokens', '?')} tok"
            + (f" · {d['latency_s']:.2f} s" if isinstance(d.get("latency_s"), int | float) else "")
            + f" · {d.get('model') or '?'}"
            + f" · adapter {d.get('adapter') or 'none'}"
        )
        if d.get("error") and not candidate:
            head += " · ERROR"
        parts.append((head, ""))
        messages = d.get("messages") or []
        if candidate and messages == previous:
            parts.append(("  prompt", "the same prompt as the candidate before"))
        else:
            for msg in messages:
                if isinstance(msg, dict):
                    content = msg.get("content")
                    parts.append(
                        (f"  {msg.get('role', '?')}", content if content is not None else msg)
                    )
        previous = messages
        parts.append(("  raw reply", d.get("raw") if d.get("raw") is not None else ""))
        if d.get("parsed") is not None:
            parts.append(("  parsed", d.get("parsed")))
        if d.get("error"):
            parts.append(("  error" if not candidate else "  why not kept", d.get("error")))
        if candidate and d.get("test_output"):
            parts.append(("  test output", d.get("test_output")))
    return parts


class RunDetailScreen(ConsoleScreen):
    """A run's nodes on the left; the chosen node's files in tabs on the right."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("o", "tab('output')", "Output"),
        Binding("i", "tab('input')", "Input"),
        Binding("e", "tab('error')", "Error"),
        Binding("c", "tab('calls')", "Calls"),
    ]

    def __init__(self, run: str) -> None:
        super().__init__()
        self.run = run
        self.view: RunView | None = None
        self._node: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="run-head")
        with Horizontal(id="run-body"):
            yield OptionList(id="nodes")
            with TabbedContent(id="node-tabs"):
                with TabPane("Output", id="output"):
                    yield JsonView(id="view-output")
                with TabPane("Input", id="input"):
                    yield JsonView(id="view-input")
                with TabPane("Error", id="error"):
                    yield JsonView(id="view-error")
                with TabPane("Calls", id="calls"):
                    yield JsonView(id="view-calls")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.run
        self.console.follow_run(self.run)
        self.query_one("#nodes", OptionList).focus()
        self.load()

    def on_unmount(self) -> None:
        self.console.follow_run(None)

    def night_changed(self, message: NightChanged) -> None:
        if self.run in message.changes.runs or message.changes.rescan:
            self.load()

    @work(thread=True, exclusive=True, group="run-detail")
    def load(self) -> None:
        view = load_run(self.console.artifacts, self.run)
        self.app.call_from_thread(self.show, view)

    # -- drawing ----------------------------------------------------------------------------

    def show(self, view: RunView) -> None:
        self.view = view
        self._show_head(view)
        nodes = self.query_one("#nodes", OptionList)
        highlighted = nodes.highlighted
        nodes.clear_options()
        for node in view.nodes:
            mark, style = NODE_MARK.get(node.status, ("?", "magenta"))
            label = Text.assemble((f"{mark} ", style), node.id)
            if node.agent:
                label.append(f"  {node.agent}", style="dim")
            nodes.add_option(Option(label, id=node.id))
        if not view.nodes:
            return
        if self._node is None:
            # a failed run opens on the node that stopped it
            first = view.failed.node if view.failed else None
            ids = [n.id for n in view.nodes]
            self._node = first if first in ids else ids[0]
            if view.failed and first in ids:
                self.query_one(TabbedContent).active = "error"
        index = next((i for i, n in enumerate(view.nodes) if n.id == self._node), highlighted)
        nodes.highlighted = index if index is not None else 0
        self._show_node()

    def _show_head(self, view: RunView) -> None:
        text = Text()
        rec = view.record
        style = {"done": "green", "failed": "bold red", "running": "bold yellow"}.get(
            view.status, "magenta"
        )
        text.append(view.name, style="bold")
        text.append("  ")
        text.append(view.status, style=style)
        if rec is not None:
            text.append(f"  flow {rec.flow} · job {rec.job_id} · attempt {rec.attempts}")
            if rec.started_at:
                text.append(f" · started {rec.started_at[:19].replace('T', ' ')}")
            if rec.finished_at:
                text.append(f" · finished {rec.finished_at[11:19]}")
        if view.failed is not None:
            f = view.failed
            text.append("\nFAILED", style="bold red")
            text.append(f" at {f.node} ({f.agent}): ")
            text.append(f.error.splitlines()[0] if f.error.strip() else "(no message)")
            text.append(f"\n  artifact {f.artifact}", style="dim")
        elif rec is not None and rec.error:
            text.append(f"\n{rec.error}", style="yellow")
        for problem in view.problems:
            text.append(f"\n{problem}", style="magenta")
        self.query_one("#run-head", Static).update(text)

    def _current(self) -> NodeView | None:
        if self.view is None:
            return None
        return next((n for n in self.view.nodes if n.id == self._node), None)

    def _show_node(self) -> None:
        node = self._current()
        if node is None:
            return
        self.query_one("#view-output", JsonView).show(
            [("", node.output)] if node.output is not None else [],
            empty="no output.json (the node has not finished, or it failed)",
            problems=node.problems,
        )
        self.query_one("#view-input", JsonView).show(
            [("", node.input)] if node.input is not None else [], empty="no input.json yet"
        )
        error_parts: list[tuple[str, Any]] = []
        if self.view and self.view.failed and self.view.failed.node == node.id:
            error_parts.append(("FAILED.json", self.view.failed.model_dump()))
        if node.error:
            error_parts.append(("error.txt", node.error))
        self.query_one("#view-error", JsonView).show(error_parts, empty="no error")
        self.query_one("#view-calls", JsonView).show(
            call_parts(node), empty="no model calls (this agent does not use the model)"
        )

    # -- events -----------------------------------------------------------------------------

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id and event.option.id != self._node:
            self._node = event.option.id
            self._show_node()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
