"""The state of a night in plain text, for ``pantheon status`` and for anyone with a terminal."""

from __future__ import annotations

from pathlib import Path

from pantheon.core.observe.engines import engine_lines
from pantheon.core.observe.metrics import read_samples, sample_text
from pantheon.core.store.control import UNUSABLE_EFFECT, ControlFile
from pantheon.core.store.diskspace import DEFAULT_MIN_FREE_BYTES, free_bytes, human_bytes
from pantheon.core.store.queue import STATUSES, JobQueue

__all__ = ["status_text"]


def _table(title: str, rows: dict[str, dict[str, int]]) -> list[str]:
    if not rows:
        return []
    width = max(len(title), *(len(k) for k in rows))
    head = f"{title:<{width}}  " + "  ".join(f"{s:>7}" for s in STATUSES)
    lines = [head, "-" * len(head)]
    for name in sorted(rows):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{rows[name][s]:>7}" for s in STATUSES))
    return lines


def status_text(artifacts: Path) -> str:
    """A plain-text summary: controls, totals, and counts per flow and per agent."""
    artifacts = Path(artifacts)
    with JobQueue(artifacts, create=False) as queue:
        counts = queue.counts()
        recent_failures = queue.jobs(status="failed", limit=5)
        control_file = ControlFile(artifacts, store=queue)
        control = control_file.read()
        engines = engine_lines(artifacts, queue=queue)
    total = counts.total
    lines = [f"artifacts  {artifacts.resolve()}"]
    lines.append(
        "jobs       "
        + "  ".join(f"{s} {total[s]}" for s in STATUSES)
        + f"  (total {sum(total.values())})"
    )
    ctl = [f"concurrency {control.concurrency}"]
    if control_file.error:
        ctl[0] += " (the last good controls)" if control_file.last_good() else " (the defaults)"
        ctl.append(f"QUEUE AND MERGES PAUSED: {control_file.error}; {UNUSABLE_EFFECT}")
    elif control.queue_paused:
        ctl.append(
            "QUEUE PAUSED"
            + (f" ({control.queue_paused_reason})" if control.queue_paused_reason else "")
        )
    if control.merges_paused and not control_file.error:
        ctl.append(
            "MERGES PAUSED"
            + (f" ({control.merges_paused_reason})" if control.merges_paused_reason else "")
        )
    lines.append("controls   " + ", ".join(ctl))
    for i, line in enumerate(engines):
        lines.append(("engines    " if i == 0 else "           ") + line)
    free = free_bytes(artifacts)
    if free is not None and free < DEFAULT_MIN_FREE_BYTES:
        lines.append(
            f"disk       {human_bytes(free)} free: an engine here pauses under "
            f"{human_bytes(DEFAULT_MIN_FREE_BYTES)} and goes on by itself when there is room"
        )
    lines.append("")
    lines += _table("flow", counts.by_flow)
    if counts.by_agent:
        lines.append("")
        lines += _table("agent", counts.by_agent)
        lines.append("(queued/running: jobs by the agent they run next; done/failed: nodes)")
    samples = read_samples(artifacts, last=1)
    if samples:
        lines.append("")
        lines.append(sample_text(samples[-1]))
    if recent_failures:
        lines.append("")
        lines.append("first failures:")
        for job in recent_failures:
            lines.append(f"  {job.run_name}: {job.error}")
    return "\n".join(lines)
