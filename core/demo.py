"""The demo night: the shipped flows over the shipped corpus."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from .agents import AgentRegistry
from .flows import load_flow, packaged_flows_dir
from .queue import JobQueue
from .submit import enqueue

__all__ = ["demo_inputs", "enqueue_demo", "night_figures"]


def demo_inputs(corpus: Path | None = None) -> list[dict[str, str]]:
    """One input per Markdown document of the demo corpus: its title and text."""
    folder = corpus or packaged_flows_dir() / "corpus" / "docs"
    out = []
    for path in sorted(folder.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        first = text.splitlines()[0] if text else path.stem
        out.append({"title": first.lstrip("# ").strip(), "text": text})
    return out


def enqueue_demo(queue: JobQueue, registry: AgentRegistry, flow_name: str = "docmeta") -> int:
    """Enqueue the demo corpus through a shipped flow; returns how many jobs."""
    flow = load_flow(packaged_flows_dir() / f"{flow_name}.yaml", registry)
    return len(enqueue(queue, flow, demo_inputs()))


def night_figures(artifacts: Path) -> str:
    """The model's share of a night, from the runs' calls.jsonl files."""
    calls = prompt = completion = failed = 0
    latency = 0.0
    first = last = None
    for path in (Path(artifacts) / "runs").glob("*/*/calls.jsonl"):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                call = json.loads(line)
            except json.JSONDecodeError:
                continue
            calls += 1
            failed += 1 if call.get("error") else 0
            prompt += int(call.get("prompt_tokens") or 0)
            completion += int(call.get("completion_tokens") or 0)
            latency += float(call.get("latency_s") or 0.0)
            at = call.get("at")
            if at:
                first = min(first or at, at)
                last = max(last or at, at)
    if not calls:
        return "model      no model calls"
    span = 0.0
    if first and last:
        span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    rate = f", {completion / span:.1f} generated tok/s over {span:.0f} s" if span > 0 else ""
    return (
        f"model      {calls} calls ({failed} unusable), {prompt} prompt + {completion} "
        f"generated tokens, mean latency {latency / calls:.2f} s{rate}"
    )
