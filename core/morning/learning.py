"""The morning report's learning section: per agent, the adapter in use, the held-out evidence
behind it, and the agent's pass rate on the nights' nodes before and after (by the adapter its
calls used, which each call records)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from pantheon.core.errors import ArtifactError
from pantheon.core.learn.files import list_trainings, read_learn, read_registry
from pantheon.core.store.jsonl import parse_jsonl
from pantheon.core.store.layout import CALLS_FILE
from pantheon.core.store.runs import RunRecord

__all__ = ["learning_section", "node_adapters"]

BASE = "base"
"""The night's nodes whose calls named no adapter."""

_EVIDENCE = (
    "judged_by",
    "tasks",
    "base_passed",
    "adapter_passed",
    "b",
    "c",
    "p_value",
    "base_auroc",
    "adapter_auroc",
)


def _first_call(path: Path) -> dict[str, Any] | None:
    """The node's first model call (None when it has none, or the file cannot be read)."""
    try:
        with open(path, "rb") as fh:
            line = fh.readline()
    except OSError:
        return None
    calls, _ = parse_jsonl(line)
    return calls[0] if calls else None


def node_adapters(folder: Path, record: RunRecord, node_agents: dict[str, str]) -> list[list[Any]]:
    """[agent, node status, adapter or None] for each finished node of the run that called the
    model (its ``calls.jsonl`` says which adapter answered)."""
    out = []
    for node, status in sorted(record.nodes.items()):
        if status not in ("done", "failed") or node not in node_agents:
            continue
        call = _first_call(folder / node / CALLS_FILE)
        if call is None:
            continue
        adapter = call.get("adapter")
        out.append([node_agents[node], status, adapter if isinstance(adapter, str) else None])
    return out


def _rate(done: int, failed: int) -> dict[str, Any]:
    n = done + failed
    return {"done": done, "failed": failed, "pass_rate": round(done / n, 4) if n else None}


def learning_section(artifacts: Path, used: list[list[Any]]) -> dict[str, Any]:
    """The ``learning`` object of the summary (see :mod:`pantheon.core.morning.report`)."""
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for agent, status, adapter in used:
        counts[agent][adapter or BASE][0 if status == "done" else 1] += 1
    try:
        registry = read_registry(artifacts)
        problem = None
    except ArtifactError as exc:
        registry, problem = None, exc.message
    entries = registry.agents if registry is not None else {}
    latest = {s.agent: s for s in list_trainings(artifacts)}
    names = set(entries) | set(latest) | {a for a, by in counts.items() if set(by) - {BASE}}
    agents = []
    for name in sorted(names):
        entry = entries.get(name)
        state = latest.get(name)
        evidence = None
        if entry is not None:
            evidence = {k: entry.evidence.get(k) for k in _EVIDENCE}
            evidence["reason"] = entry.evidence.get("reason")
        elif state is not None and state.evaluation is not None:
            ev = state.evaluation
            evidence = {k: getattr(ev, k) for k in _EVIDENCE}
            evidence["reason"] = ev.reason
        if evidence is not None:
            evidence["promoted"] = entry is not None
        agents.append(
            {
                "agent": name,
                "adapter": entry.adapter if entry is not None else None,
                "promoted_at": entry.promoted_at.isoformat()
                if entry is not None and entry.promoted_at
                else None,
                "evidence": evidence,
                "night": {k: _rate(*v) for k, v in sorted(counts.get(name, {}).items())},
                "last": None
                if state is None
                else {
                    "id": state.id,
                    "status": state.status,
                    "step": state.step,
                    "steps": state.steps,
                    "stopped": state.stopped,
                    "minutes": round(state.elapsed_s / 60, 1),
                    "heldout_loss_before": state.heldout_loss_before,
                    "heldout_loss_after": state.heldout_loss_after,
                    "error": state.error,
                },
            }
        )
    learn = read_learn(artifacts)
    return {
        "agents": agents,
        "learn": None if learn is None else learn.model_dump(mode="json"),
        "problem": problem,
    }
