"""Agents that talk to the local model server.

Each asks for one JSON object fitting its ``Output`` (schema-constrained where the server supports
it), validates it, and records every call in the node's ``calls.jsonl``; a reply that cannot be
used gets one corrective retry, then the node fails with the reason.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .agents import Agent, NodeContext
from .doccheck import check_frontmatter, failed_checks
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

    class Reply(BaseModel):
        """What the model is asked for, typed only: the limits are asked for in the prompt and
        checked after the reply (``pantheon.core.doccheck``), never cut by a grammar."""

        title: str
        description: str
        tags: list[str]

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        max_tokens: int = Field(default=512, ge=16, le=4096)
        """Room for the reply; one cut short is refused and asked again, never used."""
        adapter: str | None = None
        """A LoRA adapter the server has loaded, by name."""
        max_chars: int = Field(default=6000, ge=100)
        """Longer documents are cut to this many characters before they reach the model."""

    SYSTEM = (
        "You write metadata for technical documentation. Read the document and reply with one "
        "JSON object: title (a short title, at most 80 characters), description (one complete "
        "sentence of at most 200 characters, in your own words, saying what the reader learns "
        "from the page; never copy the page's sentences) and tags (1 to 5 lowercase keywords of "
        "a word or two)."
    )

    @staticmethod
    def problems(reply: BaseModel, body: str | None) -> list[str]:
        """What a reply breaks of the asked limits (none: it may be used)."""
        return failed_checks(check_frontmatter(reply.model_dump(), body))

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        params: DocDescribe.Params = ctx.params  # type: ignore[assignment]
        messages = [
            {"role": "system", "content": self.SYSTEM},
            {"role": "user", "content": input.text[: params.max_chars]},
        ]
        reply = await ask(
            ctx.model(),
            messages,
            self.Reply,
            log=ctx.calls,
            max_tokens=params.max_tokens,
            adapter=params.adapter,
            check=lambda r: self.problems(r, input.text),
        )
        return self.Output.model_validate(reply.model_dump())


AGENTS: list[type[Agent]] = [DocDescribe]
