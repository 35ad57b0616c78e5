"""Pantheon's engine: flows, agents, the durable queue, the artifacts directory and the runner.

Headless by design: nothing here imports Textual, so ``pantheon engine`` runs under tmux or
systemd on a GPU host and the console attaches through the artifacts directory.
"""

from .agents import ENTRY_POINT_GROUP, Agent, AgentRegistry, NodeContext, NoParams, default_registry
from .control import Control, ControlFile
from .engine import Engine, EngineStats
from .errors import (
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
from .flows import Flow, load_flow, locate_flow, parse_flow
from .queue import Job, JobQueue
from .runner import Runner
from .submit import enqueue, read_inputs_jsonl

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
