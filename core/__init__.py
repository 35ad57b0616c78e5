"""Pantheon's engine: flows, agents, the durable queue, the artifacts directory and the runner.

Headless by design: nothing here imports Textual, so ``pantheon engine`` runs under tmux or
systemd on a GPU host and the console attaches through the artifacts directory.

The folders are named for the night's loop:

- ``store/``    what the night keeps on disk: artifacts layout, run records, queue, controls
- ``flows/``    flow files, parsed and checked
- ``agents/``   the agent base class and registry; the built-in agents by kind
- ``work/``     git worktrees, tests and their sandbox, code fixes, docs checks, tools, canaries
- ``model/``    the model client, endpoint guard, safe call, model server, model file store
- ``run/``      the engine, the runner, the demo night
- ``observe/``  metrics, queue math, status, the artifacts watcher, rate-limited logs
- ``views/``    the console's read models
- ``morning/``  the operator's review and the report
- ``learn/``    the learn loop's files and the adapter registry

This package's face is lazy: ``from pantheon.core import Engine`` loads the engine, and
importing one small module (``pantheon.core.errors``) loads nothing else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "ENTRY_POINT_GROUP": "agents.base",
    "Agent": "agents.base",
    "AgentRegistry": "agents.base",
    "NodeContext": "agents.base",
    "NoParams": "agents.base",
    "default_registry": "agents.builtin",
    "Control": "store.control",
    "ControlFile": "store.control",
    "Engine": "run.engine",
    "EngineStats": "run.engine",
    "AgentError": "errors",
    "ArtifactError": "errors",
    "ConfigError": "errors",
    "EndpointRefused": "errors",
    "FlowError": "errors",
    "ModelServerError": "errors",
    "ModelStoreError": "errors",
    "NodeError": "errors",
    "PantheonError": "errors",
    "QueueError": "errors",
    "ReplyError": "errors",
    "ServerUnavailable": "errors",
    "Flow": "flows.flow",
    "load_flow": "flows.flow",
    "locate_flow": "flows.flow",
    "parse_flow": "flows.flow",
    "Job": "store.queue",
    "JobQueue": "store.queue",
    "Runner": "run.runner",
    "enqueue": "flows.submit",
    "read_inputs_jsonl": "flows.submit",
}

__all__ = [
    "ENTRY_POINT_GROUP",
    "Agent",
    "AgentError",
    "AgentRegistry",
    "ArtifactError",
    "ConfigError",
    "Control",
    "ControlFile",
    "EndpointRefused",
    "Engine",
    "EngineStats",
    "Flow",
    "FlowError",
    "Job",
    "JobQueue",
    "ModelServerError",
    "ModelStoreError",
    "NoParams",
    "NodeContext",
    "NodeError",
    "PantheonError",
    "QueueError",
    "ReplyError",
    "Runner",
    "ServerUnavailable",
    "default_registry",
    "enqueue",
    "load_flow",
    "locate_flow",
    "parse_flow",
    "read_inputs_jsonl",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'pantheon.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pantheon.core.{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:
    from pantheon.core.agents.base import (
        ENTRY_POINT_GROUP,
        Agent,
        AgentRegistry,
        NodeContext,
        NoParams,
    )
    from pantheon.core.agents.builtin import default_registry
    from pantheon.core.errors import (
        AgentError,
        ArtifactError,
        ConfigError,
        EndpointRefused,
        FlowError,
        ModelServerError,
        ModelStoreError,
        NodeError,
        PantheonError,
        QueueError,
        ReplyError,
        ServerUnavailable,
    )
    from pantheon.core.flows.flow import Flow, load_flow, locate_flow, parse_flow
    from pantheon.core.flows.submit import enqueue, read_inputs_jsonl
    from pantheon.core.run.engine import Engine, EngineStats
    from pantheon.core.run.runner import Runner
    from pantheon.core.store.control import Control, ControlFile
    from pantheon.core.store.queue import Job, JobQueue
