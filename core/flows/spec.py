"""A flow file as written: its nodes and references, validated field by field (the checks
of the flow as a whole are in checks.py, the checked flow in flow.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ID_RE", "NAME_RE", "FlowSpec", "NodeSpec", "Ref", "unescape"]

NAME_RE = r"^[A-Za-z][A-Za-z0-9_.-]*$"
ID_RE = r"^[A-Za-z][A-Za-z0-9_-]*$"


class NodeSpec(BaseModel):
    """One node of a flow, as written in the file."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_RE)
    """Unique within the flow; names the node's artifacts folder."""
    agent: str = Field(min_length=1)
    """The registered agent this node runs."""
    inputs: dict[str, Any] = Field(default_factory=dict)
    """Agent input field -> literal value or ``$reference``."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Settings for the agent, validated against its ``Params``."""
    after: list[str] = Field(default_factory=list)
    """Nodes that must finish first, beyond those the inputs refer to."""
    description: str = ""


class FlowSpec(BaseModel):
    """A flow file, as written."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_RE)
    """The flow's name; runs live in ``runs/<name>-<run id>/``."""
    description: str = ""
    version: int = 1
    input: dict[str, str] = Field(default_factory=dict)
    """The job input's fields and their types (``str``, ``int?``, ...)."""
    nodes: list[NodeSpec] = Field(min_length=1)
    output: str | None = None
    """The node whose output is the run's output (default: the last node)."""


@dataclass(frozen=True, slots=True)
class Ref:
    """A ``$source.field`` reference; ``source`` is ``input`` or a node id."""

    source: str
    field: str | None

    @classmethod
    def parse(cls, value: Any) -> Ref | None:
        if not isinstance(value, str) or not value.startswith("$") or value.startswith("$$"):
            return None
        body = value[1:]
        source, _, fld = body.partition(".")
        return cls(source, fld or None)

    def __str__(self) -> str:
        return f"${self.source}" + (f".{self.field}" if self.field else "")


def unescape(value: Any) -> Any:
    """A literal value with each ``$$`` escape turned back into ``$``, in lists and mappings
    too."""
    if isinstance(value, str) and value.startswith("$$"):
        return value[1:]
    if isinstance(value, list):
        return [unescape(v) for v in value]
    if isinstance(value, dict):
        return {k: unescape(v) for k, v in value.items()}
    return value
