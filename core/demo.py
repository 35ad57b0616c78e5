"""The demo night: the shipped flows over the shipped corpus."""

from __future__ import annotations

from pathlib import Path

from .agents import AgentRegistry
from .flows import load_flow, packaged_flows_dir
from .queue import JobQueue
from .submit import enqueue

__all__ = ["demo_inputs", "enqueue_demo"]


def demo_inputs(corpus: Path | None = None) -> list[dict[str, str]]:
    """One input per Markdown document of the demo corpus: its title and text."""
    folder = corpus or packaged_flows_dir() / "corpus" / "docs"
    out = []
    for path in sorted(folder.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        first = text.splitlines()[0] if text else path.stem
        out.append({"title": first.lstrip("# ").strip(), "text": text})
    return out


def enqueue_demo(queue: JobQueue, registry: AgentRegistry) -> int:
    """Enqueue the demo corpus; returns how many jobs."""
    flow = load_flow(packaged_flows_dir() / "textstats.yaml", registry)
    return len(enqueue(queue, flow, demo_inputs()))
