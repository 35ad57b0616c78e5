"""The console's command palette entries for the night (ctrl+p): the same actions as its keys."""

from __future__ import annotations

from collections.abc import Iterator

from textual.app import SystemCommand

from .messages import ConsoleApp

__all__ = ["night_commands"]


def night_commands(app: ConsoleApp) -> Iterator[SystemCommand]:
    c = app.current_control()
    yield SystemCommand(
        "Resume merges" if c.merges_paused else "Pause merges",
        "Merge gate: merge passing changes, or keep them for the morning review (m)",
        app.action_toggle_merges,
    )
    yield SystemCommand(
        "Resume the queue" if c.queue_paused else "Pause the queue",
        "Stop or restart claiming new jobs; running ones finish (p)",
        app.action_toggle_queue,
    )
    yield SystemCommand(
        "Concurrency up",
        f"Run one more job at once (c = {c.concurrency}) (+)",
        lambda: app.action_concurrency(1),
    )
    yield SystemCommand(
        "Concurrency down",
        f"Run one job fewer at once (c = {c.concurrency}) (-)",
        lambda: app.action_concurrency(-1),
    )
    yield SystemCommand(
        "Morning review",
        "The changes that wait: diffs, tests, reviews; merge or reject them (r)",
        app.action_review,
    )
    yield SystemCommand(
        "Training",
        "Each agent's mined data, promoted adapter and latest training; train one (t)",
        app.action_training,
    )
    yield SystemCommand("Help", "Keys and what the figures mean (?)", app.action_help)
    yield SystemCommand(
        "Stop the night",
        "Its jobs in flight finish, the rest wait for the next night; again to cancel them (S)",
        app.action_stop_night,
    )
