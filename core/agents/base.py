"""Agents and their registry.

An agent is a named unit of work with typed edges: a pydantic ``Input`` it accepts, a pydantic
``Output`` it returns, and optional ``Params`` set per node in a flow file. Agents register by
name in an :class:`AgentRegistry`; Pantheon's own agents are registered by
:func:`default_registry`, and a user's package adds its own through the entry-point group
``pantheon.agents`` — the entry point names an Agent subclass, an iterable of them, or a
function that takes the registry and registers what it likes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from pantheon.core.errors import AgentError, NodeError

if TYPE_CHECKING:
    from pantheon.core.model.client import LLMClient
    from pantheon.core.model.safecall import CallLog
    from pantheon.core.work.git import JobWorkspace

__all__ = [
    "ENTRY_POINT_GROUP",
    "Agent",
    "AgentRegistry",
    "NoParams",
    "NodeContext",
    "StrictModel",
    "require_workspace",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pantheon.agents"


class NoParams(BaseModel):
    """The params of an agent that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(slots=True)
class NodeContext:
    """What a running node knows about where it runs."""

    run_id: str
    """The run's id, e.g. ``000042``."""
    job_id: int
    """The queue's id of the job this run belongs to."""
    flow: str
    """The flow's name."""
    node: str
    """This node's id in the flow."""
    node_dir: Path
    """``runs/<flow>-<run id>/<node id>/``: where this node's artifacts live."""
    params: BaseModel
    """This node's params, validated against the agent's ``Params``."""
    job_input: dict[str, Any] = field(default_factory=dict)
    """The job's whole input, as enqueued."""
    llm: LLMClient | None = None
    """The local model server's client (for agents that use the model)."""
    calls: CallLog | None = None
    """``<node>/calls.jsonl``: where every model call of this node is recorded."""
    artifacts: Path | None = None
    """The artifacts directory (for control.json, say)."""
    workspace: JobWorkspace | None = None
    """The job's branch and worktree of the target repository (agents that use one)."""

    def model(self) -> LLMClient:
        """The model server's client; NodeError when the node has none."""
        if self.llm is None:
            raise NodeError(self.node, f"node {self.node!r} needs the model server")
        return self.llm


class Agent:
    """Base class of every agent.

    Subclasses set ``name``, ``description``, ``Input`` and ``Output`` (and ``Params`` when the
    agent takes any) and implement :meth:`run`. A *gate* agent (``gate = True``) returns an
    output with a boolean ``passed`` field; ``passed: false`` stops its run with ``FAILED.json``
    (a failing test or review), though the output itself is kept.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Input: ClassVar[type[BaseModel]]
    Output: ClassVar[type[BaseModel]]
    Params: ClassVar[type[BaseModel]] = NoParams
    gate: ClassVar[bool] = False
    uses_model: ClassVar[bool] = False
    """True for agents that call the local model server (through ``ctx.llm``)."""
    uses_workspace: ClassVar[bool] = False
    """True for agents that work in the job's git worktree (the job names its ``repo``)."""
    reviewer: ClassVar[bool] = False
    """A gate that judges another node's work; two of them in a run make a review pair (κ)."""
    judged_by: ClassVar[str] = "flow"
    """How an adapter of this agent is judged on held-out work: ``flow`` (each held-out job
    again through its whole flow), ``pass@1`` (a code writer's one greedy fix, the real tests
    judging) or ``labels`` (a reviewer's verdicts against known right ones)."""

    async def run(self, input: Any, ctx: NodeContext) -> BaseModel:  # pragma: no cover - abstract
        raise AgentError(f"agent {self.name!r} does not implement run()")

    @classmethod
    def check_definition(cls) -> None:
        """Raise AgentError when the class is not a usable agent."""
        where = f"{cls.__module__}.{cls.__qualname__}"
        if not isinstance(cls.name, str) or not cls.name.strip():
            raise AgentError(f"agent class {where} has no name")
        for attr in ("Input", "Output", "Params"):
            model = getattr(cls, attr, None)
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise AgentError(f"agent {cls.name!r} ({where}): {attr} must be a pydantic model")
        if cls.reviewer and not cls.gate:
            raise AgentError(f"agent {cls.name!r} ({where}) is a reviewer, so it must be a gate")
        if cls.gate and "passed" not in cls.Output.model_fields:
            raise AgentError(
                f"agent {cls.name!r} ({where}) is a gate but its Output has no 'passed' field"
            )
        if cls.run is Agent.run:
            raise AgentError(f"agent {cls.name!r} ({where}) does not implement run()")


class AgentRegistry:
    """Agents by name."""

    def __init__(self) -> None:
        self._agents: dict[str, type[Agent]] = {}
        self._origin: dict[str, str] = {}
        self.load_errors: list[str] = []
        """Plugins that could not be loaded, each as one readable line."""

    def register(self, agent: type[Agent], *, origin: str = "pantheon", replace: bool = False):
        """Register an Agent subclass; a second agent of the same name is refused."""
        if not (isinstance(agent, type) and issubclass(agent, Agent)):
            raise AgentError(f"{agent!r} is not an Agent subclass (from {origin})")
        agent.check_definition()
        if agent.name in self._agents and not replace and self._agents[agent.name] is not agent:
            raise AgentError(
                f"agent {agent.name!r} from {origin} clashes with the one from "
                f"{self._origin[agent.name]}",
                hint="agent names are global; give yours a prefix of its own (e.g. 'acme.lint')",
            )
        self._agents[agent.name] = agent
        self._origin[agent.name] = origin
        return agent

    def get(self, name: str) -> type[Agent]:
        try:
            return self._agents[name]
        except KeyError:
            raise AgentError(f"unknown agent {name!r}", hint=self.suggest(name)) from None

    def suggest(self, name: str) -> str:
        import difflib

        close = difflib.get_close_matches(name, list(self._agents), n=3)
        if close:
            return "did you mean " + " or ".join(repr(c) for c in close) + "?"
        return "`pantheon agents` lists the agents this install knows"

    def origin(self, name: str) -> str:
        return self._origin[name]

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def __iter__(self) -> Iterator[type[Agent]]:
        return iter(sorted(self._agents.values(), key=lambda a: a.name))

    def __len__(self) -> int:
        return len(self._agents)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Load the agent plugins installed under ``group``; a broken one is reported, not fatal."""
        for ep in metadata.entry_points(group=group):
            origin = f"entry point {ep.name!r} ({ep.value})"
            try:
                self._register_object(ep.load(), origin)
            except Exception as exc:  # a broken plugin must not stop the night
                msg = f"{origin}: {exc}"
                log.warning("could not load agent plugin %s", msg)
                self.load_errors.append(msg)

    def _register_object(self, obj: object, origin: str) -> None:
        if isinstance(obj, type) and issubclass(obj, Agent):
            self.register(obj, origin=origin)
        elif isinstance(obj, Iterable) and not isinstance(obj, str | bytes):
            for item in obj:
                self._register_object(item, origin)
        elif callable(obj):
            cast: Callable[[AgentRegistry], object] = obj  # type: ignore[assignment]
            cast(self)
        else:
            raise AgentError(f"{origin} names {obj!r}, which is neither an Agent nor a function")


class StrictModel(BaseModel):
    """A model that refuses fields it does not name (an agent's params or reply)."""

    model_config = ConfigDict(extra="forbid")


def require_workspace(ctx: NodeContext):
    """The job's git worktree, or a NodeError naming the node that needs one."""
    if ctx.workspace is None:
        raise NodeError(ctx.node, f"{ctx.node} needs the job's git worktree")
    return ctx.workspace
