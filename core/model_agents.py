"""Agents that talk to the local model server.

Each asks for one JSON object fitting its ``Output`` (schema-constrained where the server supports
it), validates it, and records every call in the node's ``calls.jsonl``; a reply that cannot be
used gets one corrective retry, then the node fails with the reason.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .agents import Agent, NodeContext
from .safecall import ask

__all__ = ["AGENTS", "DocDescribe"]

Tag = Annotated[str, StringConstraints(min_length=1, max_length=24)]


class DocDescribe(Agent):
    """A title, a one-sentence description and a few tags for a document."""

    name = "doc.describe"
    description = "Asks the local model for a document's title, description and tags."
    uses_model = True

    class Input(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str = Field(min_length=1)

    class Output(BaseModel):
        title: str = Field(min_length=1, max_length=80)
        description: str = Field(min_length=10, max_length=200)
        tags: list[Tag] = Field(min_length=1, max_length=5)

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        max_tokens: int = Field(default=512, ge=16, le=4096)
        """Room for the longest object the schema allows (the grammar then always closes it)."""
        adapter: str | None = None
        """A LoRA adapter the server has loaded, by name."""
        max_chars: int = Field(default=6000, ge=100)
        """Longer documents are cut to this many characters before they reach the model."""

    SYSTEM = (
        "You write metadata for technical documentation. Read the document and reply with one "
        "JSON object: title (a short title), description (one sentence, under 200 characters, "
        "saying what the reader learns) and tags (1 to 5 short lowercase keywords)."
    )

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        params: DocDescribe.Params = ctx.params  # type: ignore[assignment]
        messages = [
            {"role": "system", "content": self.SYSTEM},
            {"role": "user", "content": input.text[: params.max_chars]},
        ]
        return await ask(
            ctx.model(),
            messages,
            self.Output,
            log=ctx.calls,
            max_tokens=params.max_tokens,
            adapter=params.adapter,
        )


AGENTS: list[type[Agent]] = [DocDescribe]
