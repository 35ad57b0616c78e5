"""Pantheon's own agents, registered together: the text checks, the model's describe, and the
work agents. The base module never imports them; this one does."""

from __future__ import annotations

from pantheon.core.agents import describe, text, work
from pantheon.core.agents.base import AgentRegistry

__all__ = ["default_registry"]


def default_registry(*, plugins: bool = True) -> AgentRegistry:
    """Pantheon's own agents and, unless ``plugins=False``, the installed plugins."""
    registry = AgentRegistry()
    for agent in (*text.AGENTS, *describe.AGENTS, *work.AGENTS):
        registry.register(agent)
    if plugins:
        registry.load_entry_points()
    return registry
