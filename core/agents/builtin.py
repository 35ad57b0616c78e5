"""Pantheon's own agents, registered together: the text checks, the model's describe, the gates,
the docs and code writers and the reviewer. The base module never imports them; this one does."""

from __future__ import annotations

from pantheon.core.agents import code, describe, docs, gates, review, text
from pantheon.core.agents.base import AgentRegistry

__all__ = ["default_registry"]


def default_registry(*, plugins: bool = True) -> AgentRegistry:
    """Pantheon's own agents and, unless ``plugins=False``, the installed plugins."""
    registry = AgentRegistry()
    work = [gates.PlanValidate, docs.DocFrontmatter, code.Codegen, gates.Test]
    work += [review.ReviewPeer, gates.MergeGate]
    for agent in (*text.AGENTS, *describe.AGENTS, *work):
        registry.register(agent)
    if plugins:
        registry.load_entry_points()
    return registry
