"""Agents that talk to the local model server.

Each asks for one JSON object fitting its ``Output`` (schema-constrained where the server supports
it), validates it, and records every call in the node's ``calls.jsonl``; a reply that cannot be
used gets one corrective retry, then the node fails with the reason.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from pantheon.core.agents.base import Agent, NodeContext
from pantheon.core.model.safecall import ask
from pantheon.core.work.doccheck import check_frontmatter, failed_checks

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
        checked after the reply (``pantheon.core.work.doccheck``), never cut by a grammar."""

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
        "You write metadata for technical documentation. Read the page and reply with one JSON "
        "object: title (the page's subject, at most 80 characters), description (ONE short "
        "sentence of at most 25 words, in your own words, saying what the reader learns; never "
        "copy the page's sentences) and tags (1 to 5 lowercase keywords, one or two words each)."
    )

    EXAMPLE_PAGE = (
        "# Retries\n\nThe client retries a request that failed with a connection error or a "
        "5xx answer. It waits 0.5 s before the first retry and doubles the wait each time, up "
        "to 8 s. Set retries=0 to turn it off. A request that still fails raises ServerDown "
        "with the last error."
    )
    EXAMPLE_REPLY = (
        '{"title": "Retries", "description": "Explains when the client retries a failed '
        'request, how long it waits between tries and how to turn retries off.", "tags": '
        '["retries", "errors", "client"]}'
    )

    @classmethod
    def messages(cls, body: str) -> list[dict[str, str]]:
        """The prompt: the instructions, one worked example, then the page."""
        return [
            {"role": "system", "content": cls.SYSTEM},
            {"role": "user", "content": cls.EXAMPLE_PAGE},
            {"role": "assistant", "content": cls.EXAMPLE_REPLY},
            {"role": "user", "content": body},
        ]

    @staticmethod
    def problems(reply: BaseModel, body: str | None, grounded_min: float = 0.0) -> list[str]:
        """What a reply breaks of the asked limits (none: it may be used); with
        ``grounded_min``, a description that does not speak of the page too."""
        return failed_checks(check_frontmatter(reply.model_dump(), body, grounded_min=grounded_min))

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        params: DocDescribe.Params = ctx.params  # type: ignore[assignment]
        reply = await ask(
            ctx.model(),
            self.messages(input.text[: params.max_chars]),
            self.Reply,
            log=ctx.calls,
            max_tokens=params.max_tokens,
            adapter=params.adapter,
            check=lambda r: self.problems(r, input.text),
        )
        return self.Output.model_validate(reply.model_dump())


AGENTS: list[type[Agent]] = [DocDescribe]
