"""The dashboard: the night's figures, the controls in force, and the live table of runs."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.widgets import Footer, Header, Input, Static

from pantheon.console.format import age, figure, job_age, job_note, job_now
from pantheon.console.messages import NightChanged, NightSnapshot
from pantheon.core.observe.engines import lines_of
from pantheon.core.observe.quality import blind_gates
from pantheon.core.store.queue import JobSummary
from pantheon.core.views.night import RunFilter, table_jobs
from pantheon.widgets.control_banner import ControlBanner
from pantheon.widgets.engine_list import EngineList
from pantheon.widgets.metric_tile import MetricTile
from pantheon.widgets.runs_table import RunRow, RunsTable
from pantheon.widgets.server_list import ServerList

from .base import ConsoleScreen

__all__ = ["DashboardScreen", "tile_figures"]

STATUS_CYCLE = (None, "running", "failed", "done", "queued")
ROW_LIMIT = 500
STALE_S = 30.0
"""A night whose last sample is older than this has no engine sampling it."""

TILES = (
    ("depth", "queue", "Jobs waiting in the queue (depth)."),
    ("running", "busy", "Jobs running now, and the concurrency c the engine may use."),
    ("rho", "ρ", "Utilization ρ = λ / (c μ) over the last minutes, and Erlang-C P(wait)."),
    ("batch", "batch", "Average batch size: requests decoded together by the model server."),
    (
        "tokens",
        "tok/s",
        "Generated tokens per second over the last 30 s (and prompt tokens, with the share the "
        "server took from its prefix cache).",
    ),
    ("kappa", "κ", "Cohen's κ between the two reviewers over the recent review pairs."),
    (
        "canary",
        "canary",
        "Planted defects (never merged) the reviewers caught, of those they judged. 'gate "
        "blind': the reviewers' calibration says they carry no measured information, so "
        "missed canaries do not pause merges.",
    ),
)


def _set(widget: Static, text: Text | str) -> None:
    """Show ``text`` in ``widget``; nothing when it did not change, and a new layout only when
    its number of lines did (a one-line change repaints that line, not the screen)."""
    plain = text.plain if isinstance(text, Text) else text
    before: str | None = getattr(widget, "_pantheon_plain", None)
    if before == plain:
        return
    lines_changed = before is None or before.count("\n") != plain.count("\n")
    widget._pantheon_plain = plain  # type: ignore[attr-defined]
    widget.update(text, layout=lines_changed)


def _series(samples: list[dict[str, Any]], get: Any) -> tuple[float, ...]:
    out = []
    for s in samples:
        try:
            v = get(s)
        except (KeyError, TypeError, AttributeError):
            v = None
        if isinstance(v, int | float):
            out.append(float(v))
    return tuple(out)


def tile_figures(snapshot: NightSnapshot) -> dict[str, tuple[str, str, str, tuple[float, ...]]]:
    """Each tile's (value, detail, level, history) from the last hour of samples."""
    samples = snapshot.samples
    last = samples[-1] if samples else {}
    totals = snapshot.totals
    c = snapshot.control.concurrency
    out: dict[str, tuple[str, str, str, tuple[float, ...]]] = {}
    out["depth"] = (
        figure(totals["queued"]),
        f"drain {age(last.get('drain_s'), short=True)}" if last.get("drain_s") else "",
        "",
        _series(samples, lambda s: s["depth"]),
    )
    rc = last.get("recommended_c")
    tuning = last.get("tuning") or {}
    auto = tuning.get("phase") in ("measuring", "settled")
    out["running"] = (
        figure(totals["running"]),
        f"c={c}" + (" auto" if auto else f" (→{rc})" if rc and rc != c else ""),
        "",
        _series(samples, lambda s: s["running"]),
    )
    rho = last.get("rho")
    out["rho"] = (
        figure(rho),
        f"P(w) {figure(last.get('p_wait'))}" if last else "no samples",
        "" if rho is None else "bad" if rho >= 1.0 else "warn" if rho > 0.8 else "",
        _series(samples, lambda s: s["rho"]),
    )
    batch = last.get("batch") or {}
    b = batch.get("value")
    source = str(batch.get("source", ""))
    gpu = "vllm" in source
    out["batch"] = (
        figure(b),
        ("server" if "/metrics" in source else "engine") if b is not None else "no figure",
        "warn" if gpu and b is not None and b < 8 else "",
        _series(samples, lambda s: s["batch"]["value"]),
    )
    # a server's counters move when requests end: over 2 s they jump; say the last 30 s
    recent = [s for s in samples[-30:] if s.get("ts", 0) >= last.get("ts", 0) - 30]
    gen = _series(recent, lambda s: s["tokens"]["generated"])
    prompt = _series(recent, lambda s: s["tokens"]["prompt"])
    cached = _series(recent, lambda s: s["cache"]["cached"])
    counted = _series(recent, lambda s: s["cache"]["prompt"])
    hit = f" ({sum(cached) / sum(counted):.0%} cached)" if sum(counted) > 0 else ""
    out["tokens"] = (
        figure(sum(gen) / len(gen), 1) if gen else "–",
        f"in {figure(sum(prompt) / len(prompt), 0)}{hit}" if prompt else "no figure",
        "",
        _series(samples, lambda s: s["tokens"]["generated"]),
    )
    kappa = last.get("kappa")
    pairs = last.get("kappa_pairs") or 0
    share = last.get("review_pass_rate")
    passing = f", {share:.0%} pass" if isinstance(share, int | float) else ""
    note = last.get("kappa_note")
    out["kappa"] = (
        figure(kappa),
        "no disagreement seen" + passing if note else f"{pairs} pairs{passing}",
        "warn" if note else ("bad" if kappa is not None and kappa < 0.6 else ""),
        _series(samples, lambda s: s["kappa"]),
    )
    canaries = last.get("canaries") or {}
    n, caught = canaries.get("n") or 0, canaries.get("caught") or 0
    catch = canaries.get("share")
    blind = blind_gates(last.get("calibration") or [], (canaries.get("by_change") or {}).keys())
    style = "" if not n or catch >= 0.8 else "bad" if catch < 0.5 else "warn"
    out["canary"] = (
        f"{caught}/{n}" if n else "–",
        ("caught; gate blind" if blind else "caught") if n else "none yet",
        "warn" if blind and n else style,
        _series(samples, lambda s: s["canaries"]["share"]),
    )
    return out


class DashboardScreen(ConsoleScreen):
    """Figures on top, the runs below; type to filter, enter to open a run."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "focus_filter", "Filter", key_display="/"),
        Binding("s", "cycle_status", "Status"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.filter = RunFilter()
        self._rows: dict[int, tuple[JobSummary, Any, str | None, RunRow]] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield ControlBanner(id="banner")
        with Horizontal(id="tiles"):
            for key, title, tip in TILES:
                yield MetricTile(title, id=f"tile-{key}", tooltip=tip)
        yield Static(id="summary")
        yield ServerList(id="servers")
        yield EngineList(id="engines")
        yield Input(
            placeholder="/ filter: status:failed flow:docops agent:codegen or any words",
            id="filter",
            select_on_focus=False,
        )
        yield RunsTable(id="runs")
        yield Static(id="empty")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(RunsTable).focus()
        self.set_interval(1.0, self._tick)
        if self.console.snapshot is not None:
            self._show_all(self.console.snapshot)

    # -- updates ----------------------------------------------------------------------------

    def night_changed(self, message: NightChanged) -> None:
        with contextlib.suppress(NoMatches):  # the screen is being taken down
            self._night_changed(message)

    def _night_changed(self, message: NightChanged) -> None:
        snap = message.snapshot
        ch = message.changes
        if ch.control or ch.rescan:
            self._show_controls(snap)
        if ch.metrics or ch.control or ch.rescan:
            self._show_tiles(snap)
        elif message.changed_jobs:
            self._show_counts(snap)
        self._show_summary(snap)
        if message.changed_jobs or ch.runs or ch.rescan:
            self._show_runs(snap)

    def _show_all(self, snap: NightSnapshot) -> None:
        self._show_controls(snap)
        self._show_tiles(snap)
        self._show_summary(snap)
        self._show_runs(snap)

    def _tick(self) -> None:
        with contextlib.suppress(NoMatches):  # the screen is being taken down
            self._clock_moved()

    def _clock_moved(self) -> None:
        """Once a second: the clock-driven parts only (ages, the engine's last sample)."""
        snap = self.console.snapshot
        if snap is None:
            return
        self._show_summary(snap)
        self.query_one(EngineList).lines = tuple(lines_of(snap.beats))
        table = self.query_one(RunsTable)
        if not table.display:
            return
        now = self.console.clock()
        for i, row in enumerate(table.rows):
            if row.status in ("running", "queued"):
                job = snap.jobs.get(row.job)
                if job is not None:
                    waiting = snap.waiting.get(job.id)
                    note = job_note(job, snap.problems.get(job.run_name), waiting, now)
                    table.set_age(i, job_age(job, now), note)

    def _show_controls(self, snap: NightSnapshot) -> None:
        banner = self.query_one(ControlBanner)
        banner.control = snap.control
        banner.problem = snap.control_error

    def _show_counts(self, snap: NightSnapshot) -> None:
        """The queue and running tiles' values, without recomputing the sparklines."""
        c = snap.control.concurrency
        self.query_one("#tile-depth", MetricTile).value = figure(snap.totals["queued"])
        running = self.query_one("#tile-running", MetricTile)
        running.value = figure(snap.totals["running"])
        if not running.detail.startswith(f"c={c}"):
            running.detail = f"c={c}"

    def _show_tiles(self, snap: NightSnapshot) -> None:
        figures = tile_figures(snap)
        for key, (value, detail, level, history) in figures.items():
            tile = self.query_one(f"#tile-{key}", MetricTile)
            tile.value, tile.detail, tile.level, tile.history = value, detail, level, history
        last = snap.samples[-1] if snap.samples else {}
        self.query_one(ServerList).rows = tuple(last.get("servers") or ())

    def _show_summary(self, snap: NightSnapshot) -> None:
        now = self.console.clock()
        counts = snap.totals
        text = Text()
        text.append(f"{len(snap.jobs)} jobs", style="bold")
        for status, style in (
            ("queued", ""),
            ("running", "yellow"),
            ("done", "green"),
            ("failed", "red"),
        ):
            text.append(" · ")
            text.append(f"{counts[status]} {status}", style=style if counts[status] else "")
        if snap.problems:
            text.append(f" · {len(snap.problems)} unreadable", style="magenta")
        text.append("  │  ")
        if snap.samples:
            ago = now - snap.samples[-1]["ts"]
            if ago > STALE_S:
                text.append(f"engine: no sample for {age(ago)}", style="dim")
            else:
                text.append(f"engine: live ({age(ago)} ago)", style="green")
        else:
            text.append("engine: no samples yet", style="dim")
        if snap.queue_error:
            text.append(f"\nqueue: {snap.queue_error}", style="red")
        _set(self.query_one("#summary", Static), text)

    def _show_runs(self, snap: NightSnapshot) -> None:
        table = self.query_one(RunsTable)
        empty = self.query_one("#empty", Static)
        box = self.query_one("#filter", Input)
        if not snap.exists or not snap.jobs:
            # nothing to filter: with no focusable widget left, every key reaches the bindings
            table.display = box.display = False
            empty.display = True
            _set(empty, self._empty_text(snap))
            return
        if not table.display:
            table.display = box.display = True
            if self.focused is None:
                table.focus()
        now = self.console.clock()
        jobs, matched = table_jobs(
            snap.jobs,
            snap.problems,
            self.filter,
            order=snap.order,
            in_flight=snap.in_flight,
            limit=ROW_LIMIT,
        )
        rows = [self._row(j, snap, now) for j in jobs]
        if len(self._rows) > 4 * ROW_LIMIT:
            self._rows = {j.id: self._rows[j.id] for j in jobs if j.id in self._rows}
        table.show(rows)
        if matched == 0:
            empty.display = True
            _set(empty, f"No run matches “{self.filter}”. Press escape to clear the filter.")
        elif matched is None or matched > len(rows):
            empty.display = True
            _set(
                empty,
                f"showing the first {len(rows)} of "
                + (f"{matched:,} runs" if matched else "more runs that match")
                + " (running first, then the latest); filter to narrow",
            )
        else:
            empty.display = False

    def _row(self, job: JobSummary, snap: NightSnapshot, now: float) -> RunRow:
        """The job's row, reused while the job, its nodes in flight and its problem are the
        same objects as last time; only the age of a waiting or running job is new."""
        flight = snap.in_flight.get(job.id, ())
        problem = snap.problems.get(job.run_name)
        waiting = snap.waiting.get(job.id)
        cached = self._rows.get(job.id)
        if cached is not None and cached[0] is job and cached[1] == flight and cached[2] == problem:
            row = cached[3]
            if job.status in ("running", "queued"):
                age = job_age(job, now)
                note = job_note(job, problem, waiting, now)
                if age != row.age or note != row.note:
                    row = replace(row, age=age, note=note)
                    self._rows[job.id] = (job, flight, problem, row)
            return row
        row = RunRow(
            key=job.run_name,
            job=job.id,
            flow=job.flow,
            status=job.status,
            now=job_now(job, flight),
            age=job_age(job, now),
            note=job_note(job, problem, waiting, now),
        )
        self._rows[job.id] = (job, flight, problem, row)
        return row

    def _empty_text(self, snap: NightSnapshot) -> Text:
        text = Text()
        if not snap.exists:
            text.append("No night here yet.\n\n", style="bold")
            text.append(f"{self.console.artifacts} holds no queue. Start one with\n\n")
        else:
            text.append("The queue is empty.\n\n", style="bold")
            text.append("Add work with\n\n")
        text.append("  pantheon night --demo", style="bold")
        text.append("          the demo night, on the embedded model\n")
        text.append("  pantheon enqueue FLOW …", style="bold")
        text.append("        then  ")
        text.append("pantheon engine", style="bold")
        text.append("\n\nThis screen follows the artifacts directory: it fills in by itself.")
        return text

    # -- actions ----------------------------------------------------------------------------

    def on_runs_table_opened(self, message: RunsTable.Opened) -> None:
        from .run_detail import RunDetailScreen

        self.app.push_screen(RunDetailScreen(message.run))

    def action_focus_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.focus()
        box.cursor_position = len(box.value)

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.value:
            box.value = ""
        self.query_one(RunsTable).focus()

    def action_cycle_status(self) -> None:
        i = STATUS_CYCLE.index(self.filter.status) if self.filter.status in STATUS_CYCLE else 0
        self.query_one("#filter", Input).value = str(
            self.filter.with_status(STATUS_CYCLE[(i + 1) % len(STATUS_CYCLE)])
        )

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter = RunFilter.parse(event.value)
        if self.console.snapshot is not None:
            self._show_runs(self.console.snapshot)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one(RunsTable).focus()
