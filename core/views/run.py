"""One run's folder read whole, for a detail view: the record, ``FAILED.json``, and each
node's input, output, error and model calls. Nothing here writes, and nothing raises over a
corrupt file: what cannot be read is returned as a problem to show.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pantheon.core.errors import ArtifactError, PantheonError
from pantheon.core.store.atomic import read_json
from pantheon.core.store.jsonl import jsonl_lines
from pantheon.core.store.layout import (
    CALLS_FILE,
    ERROR_FILE,
    FAILED_FILE,
    INPUT_FILE,
    OUTPUT_FILE,
    RUN_FILE,
    run_path,
)
from pantheon.core.store.queue import JobQueue
from pantheon.core.store.queueurl import has_queue
from pantheon.core.store.records import CallRecord
from pantheon.core.store.runs import FailedRecord, RunRecord

__all__ = ["CallView", "NodeView", "RunView", "flow_agents", "load_run"]


@dataclass
class CallView:
    """One line of a node's ``calls.jsonl``."""

    data: dict[str, Any] | None
    problem: str | None = None


@dataclass
class NodeView:
    id: str
    agent: str | None
    status: str
    input: Any = None
    output: Any = None
    error: str | None = None
    calls: list[CallView] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Files of this node that could not be read."""


@dataclass
class RunView:
    name: str
    record: RunRecord | None
    failed: FailedRecord | None
    nodes: list[NodeView]
    problems: list[str]
    """Why the run's own files could not be read."""

    @property
    def status(self) -> str:
        return self.record.status if self.record else "unreadable"


def flow_agents(artifacts: Path, flow_sha: str | None) -> dict[str, str]:
    """Node id -> agent name, from the flow text stored in the queue."""
    if not flow_sha or not has_queue(artifacts):
        return {}
    try:
        with JobQueue(artifacts, create=False, timeout_s=2.0) as queue:
            _, text = queue.flow_text(flow_sha)
        spec = yaml.safe_load(text)
        return {
            str(n["id"]): str(n["agent"])
            for n in spec.get("nodes", [])
            if isinstance(n, dict) and "id" in n and "agent" in n
        }
    except (PantheonError, yaml.YAMLError, AttributeError, TypeError):
        return {}


def _read_any(path: Path, problems: list[str]) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError:
        return None
    except ArtifactError as exc:
        problems.append(exc.message)
        return None


def _read_calls(path: Path, problems: list[str]) -> list[CallView]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        problems.append(f"cannot read {path}: {exc.strerror or exc}")
        return []
    return [
        CallView(value) if value is not None else CallView(None, f"{path} line {i} {why}")
        for i, value, why in jsonl_lines(raw, record=CallRecord)
    ]


def load_run(artifacts: Path, run_name: str) -> RunView:
    """One run's folder, read whole: the record, FAILED.json, and each node's files."""
    artifacts = Path(artifacts)
    folder = run_path(artifacts, run_name)
    problems: list[str] = []
    record: RunRecord | None = None
    data = _read_any(folder / RUN_FILE, problems)
    if data is not None:
        try:
            record = RunRecord.model_validate(data)
        except ValidationError as exc:
            why = exc.errors()[0]["msg"]
            problems.append(f"{folder / RUN_FILE} does not fit {RUN_FILE}: {why}")
    elif not problems and not folder.is_dir():
        problems.append(f"{folder} does not exist (the job has not started)")
    failed: FailedRecord | None = None
    fdata = _read_any(folder / FAILED_FILE, problems)
    if fdata is not None:
        try:
            failed = FailedRecord.model_validate(fdata)
        except ValidationError as exc:
            problems.append(f"{folder / FAILED_FILE} is not usable: {exc.errors()[0]['msg']}")
    agents = flow_agents(artifacts, record.flow_sha256 if record else None)
    order = list(record.nodes) if record else []
    try:
        on_disk = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    except OSError:
        on_disk = []
    order += [n for n in on_disk if n not in order]
    nodes = []
    for node_id in order:
        nd = folder / node_id
        node_problems: list[str] = []
        error = None
        try:
            error = (nd / ERROR_FILE).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            pass
        except OSError as exc:
            node_problems.append(f"cannot read {nd / ERROR_FILE}: {exc.strerror or exc}")
        status = record.nodes.get(node_id, "unknown") if record else "unknown"
        if status == "pending" and record and record.status == "running":
            # run.json is written when a group of nodes ends; the files say more
            if (nd / OUTPUT_FILE).exists():
                status = "done"
            elif (nd / ERROR_FILE).exists():
                status = "failed"
            elif (nd / INPUT_FILE).exists():
                status = "running"
        nodes.append(
            NodeView(
                id=node_id,
                agent=agents.get(node_id),
                status=status,
                input=_read_any(nd / INPUT_FILE, node_problems),
                output=_read_any(nd / OUTPUT_FILE, node_problems),
                error=error,
                calls=_read_calls(nd / CALLS_FILE, node_problems),
                problems=node_problems,
            )
        )
    return RunView(run_name, record, failed, nodes, problems)
