"""Putting jobs in the queue: every input checked against its flow before anything is stored."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pantheon.core.errors import FlowError
from pantheon.core.flows.flow import Flow
from pantheon.core.store.queue import JobQueue

__all__ = ["enqueue", "read_inputs_jsonl"]


def enqueue(
    queue: JobQueue, flow: Flow, inputs: Iterable[dict[str, Any]], *, priority: int = 0
) -> list[int]:
    """Check every input against the flow, then enqueue them all in one transaction.

    Nothing is stored when any input does not fit: the error names each one that failed.
    """
    checked: list[dict[str, Any]] = []
    problems: list[str] = []
    for i, data in enumerate(inputs, start=1):
        try:
            checked.append(flow.validate_job_input(data))
        except FlowError as exc:
            where = getattr(data, "_where", None) or f"input #{i}"
            problems.append(f"{where}: {exc.message}")
    if problems:
        shown = problems[:20] + (
            [f"... and {len(problems) - 20} more"] if len(problems) > 20 else []
        )
        raise FlowError(
            f"{len(problems)} input(s) do not fit flow {flow.name!r}; nothing was enqueued:\n  "
            + "\n  ".join(shown),
            problems=problems,
        )
    if not checked:
        return []
    return queue.enqueue(
        flow=flow.name,
        flow_sha=flow.sha256,
        flow_source=flow.source,
        flow_text=flow.text,
        first_agent=flow.first_agent(),
        inputs=checked,
        priority=priority,
    )


class _Located(dict[str, Any]):
    """A dict that remembers the file and line it came from."""

    _where: str = ""


def read_inputs_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Job inputs from a JSON Lines file: one object a line; blank lines and # comments skipped."""
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise FlowError(f"{path}: cannot read the inputs file: {exc.strerror or exc}") from None
    with handle:
        try:
            lines = list(handle)
        except UnicodeDecodeError as exc:
            raise FlowError(
                f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); nothing was enqueued"
            ) from None
        for lineno, line in enumerate(lines, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise FlowError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
            if not isinstance(value, dict):
                raise FlowError(f"{path}:{lineno}: each line must be a JSON object")
            item = _Located(value)
            item._where = f"{path}:{lineno}"
            yield item
