"""A mined data set: each agent's chat examples, and the held-out tasks to judge its adapter on.

``training/<agent>/`` holds ``data.jsonl`` (one chat example a line: the messages the agent saw
and, last, the reply to learn; its side of the split; where it came from), ``tasks.jsonl`` (the
held-out jobs, green or not) and ``mine.json`` (the mining's figures, :class:`MineStats`).

Each job falls on one side of a deterministic split by **task**, not by run: a hash of the task's
key (the file the job works on — every HumanEval mutant of one problem has the same file name —
or the input's ``task_key``), so that no two sides share a task. Examples are deduplicated on
their full text.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pantheon.core.errors import ArtifactError
from pantheon.core.learn.files import MineStats, training_root
from pantheon.core.store.atomic import atomic_write_json, atomic_write_text
from pantheon.core.store.jsonl import read_jsonl

__all__ = [
    "DATA",
    "STATS",
    "TASKS",
    "AgentData",
    "chat_messages",
    "heldout",
    "read_calls",
    "read_examples",
    "read_tasks",
    "task_key",
    "write_data_set",
]

DATA = "data.jsonl"
TASKS = "tasks.jsonl"
STATS = "mine.json"


def heldout(key: str, fraction: float) -> bool:
    """Whether a task is held out: the same answer on every machine and every night."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def task_key(inputs: dict[str, Any], run_name: str) -> str:
    """What makes two jobs the same task, for the split: the input's ``task_key``, else the
    name of the file it works on (``path``: every mutant of one HumanEval problem, and every
    night's job on one page, share it), else the run."""
    key = inputs.get("task_key")
    if isinstance(key, str) and key:
        return key
    path = inputs.get("path")
    if isinstance(path, str) and path.strip():
        return "file:" + PurePosixPath(path.strip()).name
    return "run:" + run_name


@dataclass
class AgentData:
    """What a mining gathers for one agent: its examples, its held-out tasks and its figures."""

    stats: MineStats
    examples: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    """The digests of the examples' messages, to deduplicate on."""
    models: Counter[str] = field(default_factory=Counter)
    """The models that answered the examples' calls."""

    def leave(self, reason: str, n: int = 1) -> None:
        """Count ``n`` jobs or calls left out, and why."""
        self.stats.left_out[reason] = self.stats.left_out.get(reason, 0) + n

    def add(self, example: dict[str, Any]) -> bool:
        """Keep an example unless one with the same messages is kept already (a duplicate)."""
        text = json.dumps(example["messages"], sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest in self.seen:
            self.stats.duplicates += 1
            return False
        self.seen.add(digest)
        self.examples.append(example)
        return True


def read_calls(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The calls a node made (its ``calls.jsonl``), and how many lines were corrupt (or hold no
    messages)."""
    calls, bad = read_jsonl(
        path,
        check=lambda c: None if isinstance(c.get("messages"), list) else "holds no messages",
    )
    return calls, len(bad)


def chat_messages(call: dict[str, Any]) -> list[dict[str, str]]:
    """The messages a call sent, as plain role and content pairs."""
    return [
        {"role": str(m.get("role")), "content": str(m.get("content") or "")}
        for m in call["messages"]
        if isinstance(m, dict)
    ]


def write_data_set(artifacts: Path, state: AgentData, now: datetime) -> None:
    """Write one agent's ``training/<agent>/``: its examples, its tasks and its figures."""
    folder = training_root(artifacts) / state.stats.agent
    stats = state.stats
    stats.examples = len(state.examples)
    stats.train = sum(1 for e in state.examples if e["split"] == "train")
    stats.heldout = stats.examples - stats.train
    stats.tasks = len(state.tasks)
    stats.model = state.models.most_common(1)[0][0] if state.models else None
    stats.at = now
    atomic_write_text(
        folder / DATA, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in state.examples)
    )
    atomic_write_text(
        folder / TASKS, "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in state.tasks)
    )
    atomic_write_json(folder / STATS, stats.model_dump(mode="json"))


def read_examples(
    artifacts: Path, agent: str, folder: Path | None = None
) -> tuple[list[dict[str, Any]], int]:
    """An agent's mined examples (or the copy a training took of them, in ``folder``), and how
    many lines were corrupt."""
    path = (folder or training_root(artifacts) / agent) / DATA
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(
            f"no mined data for agent {agent!r} ({path} is missing)",
            hint=f"run: pantheon traces mine --artifacts {artifacts}",
        ) from None
    out, bad = [], 0
    for line in raw.splitlines():
        try:
            item = json.loads(line)
            msgs = item["messages"]
            if not (
                isinstance(msgs, list)
                and len(msgs) >= 2
                and msgs[-1].get("role") == "assistant"
                and item.get("split") in ("train", "heldout")
            ):
                raise ValueError("not a chat example")
            out.append(item)
        except (ValueError, KeyError, TypeError, AttributeError):
            bad += 1
    return out, bad


def read_tasks(artifacts: Path, agent: str, folder: Path | None = None) -> list[dict[str, Any]]:
    """An agent's held-out tasks (or the copy a training took of them, in ``folder``); a line
    that is not one is skipped."""
    path = (folder or training_root(artifacts) / agent) / TASKS
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.splitlines():
        try:
            task = json.loads(line)
        except ValueError:
            continue
        if isinstance(task, dict) and "input" in task and "flow_sha256" in task:
            out.append(task)
    return out
