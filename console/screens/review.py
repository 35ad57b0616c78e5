"""The morning review: the changes that wait, each with its diff, test output and both reviews;
merge or reject them; or look at the failures."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.syntax import Syntax
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Footer, Header, OptionList, Static, TabbedContent, TabPane
from textual.widgets.option_list import Option

from pantheon.console.messages import NightChanged
from pantheon.core.errors import PantheonError
from pantheon.core.morning.report import build_summary
from pantheon.core.morning.review import Change, merge_by_hand, reject, revert
from pantheon.core.views.night import load_run
from pantheon.core.work.git import GitRepo
from pantheon.widgets.json_view import JsonView

from .base import ConsoleScreen
from .dialogs import ConfirmScreen

__all__ = ["ReviewScreen"]

STATE_MARK = {
    "waiting": ("●", "yellow"),
    "merged": ("✓", "green"),
    "rejected": ("✗", "red"),
    "reverted": ("↺", "magenta"),
}


class ReviewScreen(ConsoleScreen):
    """Waiting changes first; ``a`` merges (for real), ``x`` rejects, ``u`` reverts a merged
    one, ``f`` shows failures."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("a", "merge", "Merge"),
        Binding("x", "reject", "Reject"),
        Binding("u", "revert", "Revert"),
        Binding("o", "open_run", "Open run"),
        Binding("f", "toggle_failures", "Failures"),
        Binding("w", "toggle_all", "All / waiting"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.showing = "changes"
        self.only_waiting = True
        self._selected: str | None = None
        self.shown_text = ""
        self._memo: dict[str, Any] = {}
        self._shown_key: tuple[str, str] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="review-head")
        with Horizontal(id="review-body"):
            yield OptionList(id="review-list")
            with TabbedContent(id="review-tabs"):
                with TabPane("Diff", id="diff"), VerticalScroll():
                    yield Static(id="review-diff")
                with TabPane("Tests", id="tests"):
                    yield JsonView(id="review-tests")
                with TabPane("Reviews", id="reviews"):
                    yield JsonView(id="review-reviews")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "morning review"
        self.query_one("#review-list", OptionList).focus()
        self.load()

    def night_changed(self, message: NightChanged) -> None:
        jobs = message.snapshot.jobs
        finished = any(
            jobs[i].status in ("done", "failed") for i in message.changed_jobs if i in jobs
        )
        if finished or "decisions.jsonl" in message.changes.other:
            self.load()

    # -- loading ----------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="review-list")
    def load(self) -> None:
        try:
            summary = build_summary(self.console.artifacts, write_cache=False, memo=self._memo)
        except PantheonError as exc:
            self.app.call_from_thread(self._show_problem, exc.message)
            return
        self.app.call_from_thread(self._show_lists, summary)

    def _show_problem(self, why: str) -> None:
        self.query_one("#review-head", Static).update(Text(why, style="red"))

    def _show_lists(self, summary: dict[str, Any]) -> None:
        order = {"waiting": 0, "rejected": 1, "merged": 2, "reverted": 3}
        self.changes = sorted(
            summary["changes"], key=lambda c: (order.get(c["state"], 3), c["job"])
        )
        self.failures = summary["failures"]
        self._fill()

    def _visible(self) -> list[dict[str, Any]]:
        if self.showing == "failures":
            return self.failures
        if self.only_waiting:
            return [c for c in self.changes if c["state"] == "waiting"]
        return self.changes

    def _fill(self) -> None:
        waiting = sum(c["state"] == "waiting" for c in self.changes)
        head = Text()
        if self.showing == "failures":
            head.append(f"{len(self.failures)} failed run(s)", style="bold red")
            head.append("  ·  f: back to the changes  ·  o: open the run")
        else:
            head.append(f"{waiting} change(s) waiting", style="bold yellow" if waiting else "bold")
            merged = sum(c["state"] == "merged" for c in self.changes)
            rejected = sum(c["state"] == "rejected" for c in self.changes)
            reverted = sum(c["state"] == "reverted" for c in self.changes)
            head.append(f" · {merged} merged · {rejected} rejected")
            head.append(f" · {reverted} reverted" if reverted else "")
            head.append(
                "  ·  a: merge  x: reject  u: revert  w: "
                + ("show all" if self.only_waiting else "only waiting")
                + "  f: failures"
            )
        self.query_one("#review-head", Static).update(head)
        options = self.query_one("#review-list", OptionList)
        options.clear_options()
        items = self._visible()
        for item in items:
            if self.showing == "failures":
                label = Text.assemble(("✗ ", "red"), item["run"], (f"  {item.get('node')}", "dim"))
            else:
                mark, style = STATE_MARK.get(item["state"], ("?", "magenta"))
                lines = "" if item.get("added") is None else f" +{item['added']}−{item['removed']}"
                label = Text.assemble(
                    (f"{mark} ", style), item["run"], (f"  {item['branch']}{lines}", "dim")
                )
            options.add_option(Option(label, id=item["run"]))
        if not items:
            self._show_empty()
            return
        ids = [i["run"] for i in items]
        index = ids.index(self._selected) if self._selected in ids else 0
        options.highlighted = index
        self._selected = ids[index]
        key = (self._selected, str(items[index].get("state")))
        if key != self._shown_key:  # a reload that changed nothing keeps the panes as they are
            self._shown_key = key
            self.show_item()

    def _show_empty(self) -> None:
        what = "failed run" if self.showing == "failures" else "change waiting for a decision"
        self.query_one("#review-diff", Static).update(Text(f"No {what}.", style="dim"))
        self.query_one("#review-tests", JsonView).show([], empty="")
        self.query_one("#review-reviews", JsonView).show([], empty="")
        self._selected = None

    def _current(self) -> dict[str, Any] | None:
        return next((i for i in self._visible() if i["run"] == self._selected), None)

    @work(thread=True, exclusive=True, group="review-item")
    def show_item(self) -> None:
        item = self._current()
        if item is None:
            return
        run = load_run(self.console.artifacts, item["run"])
        diff: str | Exception
        if self.showing == "failures":
            diff = ""
        else:
            try:
                repo = GitRepo(item["repo"])
                if item["state"] in ("merged", "reverted") and item.get("commit"):
                    diff = repo.merged_diff(item["commit"])  # what its merge brought in
                else:
                    diff = repo.diff(item["branch"], item["target"])
            except PantheonError as exc:
                diff = exc
        self.app.call_from_thread(self._show_item, item, run, diff)

    def _show_item(self, item: dict[str, Any], run: Any, diff: str | Exception) -> None:
        view = self.query_one("#review-diff", Static)
        self.shown_text = diff if isinstance(diff, str) else str(diff)
        """What the diff pane shows, as plain text."""
        if self.showing == "failures":
            failed = run.failed
            self.shown_text = f"FAILED at {item.get('node')}: {item.get('error')}"
            view.update(
                Text.assemble(
                    ("FAILED ", "bold red"),
                    f"at {item.get('node')} ({item.get('agent')})\n\n",
                    str(item.get("error") or ""),
                    (f"\n\nartifact {item.get('artifact')}", "dim"),
                    ("" if failed else "\n(FAILED.json is missing)", "dim"),
                )
            )
        elif isinstance(diff, Exception):
            view.update(Text(f"cannot show the diff: {diff}", style="red"))
        elif not diff.strip():
            view.update(Text("(no difference from the target branch)", style="dim"))
        else:
            theme = "ansi_dark" if self.app.current_theme.dark else "ansi_light"
            view.update(Syntax(diff, "diff", theme=theme, background_color="default"))
        tests = [n for n in run.nodes if n.agent == "test"]
        self.query_one("#review-tests", JsonView).show(
            [
                (f"{n.id} ({n.status})", n.output if n.output is not None else n.error)
                for n in tests
            ],
            empty="the tests did not run",
        )
        reviews = [n for n in run.nodes if n.agent == "review.peer"]
        self.query_one("#review-reviews", JsonView).show(
            [
                (f"{n.id} ({n.status})", n.output if n.output is not None else n.error)
                for n in reviews
            ],
            empty="no review ran",
        )

    # -- events and actions -----------------------------------------------------------------

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id and event.option.id != self._selected:
            self._selected = event.option.id
            item = self._current()
            self._shown_key = (self._selected, str(item.get("state") if item else ""))
            self.show_item()

    def _waiting_change(self) -> Change | None:
        item = self._current()
        if self.showing != "changes" or item is None:
            self.notify("pick a change first (f goes back to the changes)", severity="warning")
            return None
        if item["state"] != "waiting":
            self.notify(f"{item['run']} is already {item['state']}", severity="warning")
            return None
        return Change(**{**item, "reviews": tuple(item.get("reviews") or (None, None))})

    def action_merge(self) -> None:
        change = self._waiting_change()
        if change is None:
            return
        rule = []
        if change.tests is not True:
            rule.append("its tests did not pass")
        if not all(change.reviews):
            rule.append("a reviewer did not pass it")
        note = f" Note: {' and '.join(rule)}." if rule else ""
        self.app.push_screen(
            ConfirmScreen(
                f"Merge {change.branch}?",
                f"A real git merge into {change.target} of {change.repo}.{note}",
                yes="Merge",
            ),
            lambda ok: ok and self._decide("merge", change),
        )

    def action_reject(self) -> None:
        change = self._waiting_change()
        if change is None:
            return
        self.app.push_screen(
            ConfirmScreen(
                f"Reject {change.branch}?",
                "The change is not merged and never becomes training data; its branch is kept "
                f"as {change.branch.replace('pantheon/', 'pantheon/rejected/', 1)}.",
                yes="Reject",
            ),
            lambda ok: ok and self._decide("reject", change),
        )

    def action_revert(self) -> None:
        item = self._current()
        if self.showing != "changes" or item is None or item["state"] != "merged":
            what = f"{item['run']} is {item['state']}" if item else "no change picked"
            self.notify(f"{what}: only a merged change can be reverted", severity="warning")
            return
        change = Change(**{**item, "reviews": tuple(item.get("reviews") or (None, None))})
        self.app.push_screen(
            ConfirmScreen(
                f"Revert {change.branch}?",
                f"A new commit on {change.target} of {change.repo} undoes its merge "
                f"({(change.commit or '')[:10]}); the change never becomes training data.",
                yes="Revert",
            ),
            lambda ok: ok and self._decide("revert", change),
        )

    @work(thread=True, group="review-decide")
    def _decide(self, what: str, change: Change) -> None:
        """A real git merge, revert or branch rename: in a thread, so the screen never
        freezes."""
        try:
            if what == "merge":
                d = merge_by_hand(self.console.artifacts, change, by="operator")
                done = f"merged {change.branch} into {change.target} ({(d.commit or '')[:10]})"
            elif what == "revert":
                d = revert(self.console.artifacts, change, by="operator")
                done = f"reverted {change.branch} on {change.target} ({(d.commit or '')[:10]})"
            else:
                d = reject(self.console.artifacts, change, by="operator")
                done = f"rejected {change.run}; its branch is kept as {d.kept_as}"
        except PantheonError as exc:
            self.app.call_from_thread(
                self.notify,
                exc.message,
                title=f"not {what.rstrip('e')}ed",
                severity="error",
                timeout=15,
            )
            return
        self.app.call_from_thread(self.notify, done)
        self.app.call_from_thread(self.load)

    def action_open_run(self) -> None:
        from .run_detail import RunDetailScreen

        if self._selected:
            self.app.push_screen(RunDetailScreen(self._selected))

    def action_toggle_failures(self) -> None:
        self.showing = "changes" if self.showing == "failures" else "failures"
        self._selected = None
        self._fill()

    def action_toggle_all(self) -> None:
        self.only_waiting = not self.only_waiting
        self._fill()
