"""The docs writer: ``doc.frontmatter`` has the local model describe a Markdown page and
writes YAML frontmatter into it, in the job's own worktree; a reply that breaks a check is
asked again, then sampled, never cut to fit.
"""

from __future__ import annotations

import asyncio

import yaml
from pydantic import Field

from pantheon.core.agents.base import Agent, NodeContext, StrictModel, require_workspace
from pantheon.core.agents.describe import DocDescribe
from pantheon.core.model.safecall import ask_sampled
from pantheon.core.work.doccheck import split_frontmatter
from pantheon.core.work.grounding import GROUNDED_MIN
from pantheon.core.work.tools import Workspace

__all__ = ["AGENTS"]


class DocFrontmatter(Agent):
    name = "doc.frontmatter"
    description = "Has the model describe a Markdown file and writes YAML frontmatter into it."
    uses_model = True
    uses_workspace = True

    class Input(StrictModel):
        path: str

    class Output(StrictModel):
        path: str
        title: str
        description: str
        tags: list[str]
        commit: str | None

    class Params(StrictModel):
        max_tokens: int = Field(default=512, ge=16, le=4096)
        adapter: str | None = None
        k: int = Field(default=4, ge=0, le=16)
        """When the greedy reply (and its corrective retry) breaks a check, this many replies
        are sampled at once and the first that passes every check is taken (0: none)."""
        temperature: float = Field(default=0.7, ge=0.0, le=2.0)
        grounded_min: float = Field(default=GROUNDED_MIN, ge=0.0, le=1.0)
        """A description with fewer of its content words on the page is asked again, as a
        broken limit is (0: not checked; the night's ``gates.grounding_min`` when the node
        gives none)."""

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        params: DocFrontmatter.Params = ctx.params  # type: ignore[assignment]
        job = require_workspace(ctx)
        path = Workspace(job.path).resolve(input.path, for_write=True)
        _, body = split_frontmatter(path.read_text(encoding="utf-8"))
        reply = await ask_sampled(
            ctx.model(),
            DocDescribe.messages(body[:6000]),
            DocDescribe.Reply,
            k=params.k,
            temperature=params.temperature,
            log=ctx.calls,
            max_tokens=params.max_tokens,
            adapter=params.adapter,
            check=lambda r: DocDescribe.problems(r, body, params.grounded_min),
        )
        meta = DocDescribe.Output.model_validate(reply.model_dump())
        front = yaml.safe_dump(meta.model_dump(), sort_keys=False, allow_unicode=True)
        path.write_text(f"---\n{front}---\n{body}", encoding="utf-8")
        commit = await asyncio.to_thread(job.commit, f"docs: frontmatter for {input.path}")
        return self.Output(path=input.path, commit=commit, **meta.model_dump())


AGENTS: list[type[Agent]] = [DocFrontmatter]
