"""Pantheon's own deterministic agents: text work and checks that need no model.

They run the demo flows before a model server is up, and they are the no-op agents of the
engine benchmark. Agents that talk to the local model live beside them as the model lands.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pantheon.core.agents.base import Agent, NodeContext
from pantheon.core.errors import NodeError

__all__ = ["AGENTS", "CheckMinWords", "Echo", "TextNormalize", "TextStats"]

_WORD = re.compile(r"[A-Za-z0-9']+")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Echo(Agent):
    """Return the payload it was given, after an optional delay; the engine's no-op agent."""

    name = "util.echo"
    description = "Returns its payload unchanged (optionally after a delay, or failing on purpose)."

    class Input(_Strict):
        payload: Any = None
        """Anything JSON."""

    class Output(_Strict):
        payload: Any = None

    class Params(_Strict):
        delay_s: float = Field(default=0.0, ge=0.0, le=3600.0)
        """Seconds to wait before answering (a stand-in for a model call)."""
        fail: bool = False
        """Fail on purpose, to try what a failing node does."""

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        params: Echo.Params = ctx.params  # type: ignore[assignment]
        if params.delay_s:
            await asyncio.sleep(params.delay_s)
        if params.fail:
            raise NodeError(ctx.node, "util.echo was asked to fail (params.fail: true)")
        return self.Output(payload=input.payload)


class TextNormalize(Agent):
    """Collapse whitespace and, by default, lowercase a text."""

    name = "text.normalize"
    description = "Collapses runs of whitespace and (by default) lowercases the text."

    class Input(_Strict):
        text: str

    class Output(_Strict):
        text: str

    class Params(_Strict):
        lowercase: bool = True

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        params: TextNormalize.Params = ctx.params  # type: ignore[assignment]
        text = " ".join(input.text.split())
        return self.Output(text=text.lower() if params.lowercase else text)


class TextStats(Agent):
    """Count the words, lines and characters of a text and name its most frequent words."""

    name = "text.stats"
    description = "Counts words, lines and characters and lists the most frequent words."

    class Input(_Strict):
        text: str

    class Output(_Strict):
        words: int
        lines: int
        chars: int
        top_words: list[str]

    class Params(_Strict):
        top: int = Field(default=5, ge=0, le=100)

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        params: TextStats.Params = ctx.params  # type: ignore[assignment]
        words = _WORD.findall(input.text.lower())
        common = [w for w, _ in Counter(words).most_common(params.top)]
        return self.Output(
            words=len(words),
            lines=input.text.count("\n") + (1 if input.text else 0),
            chars=len(input.text),
            top_words=common,
        )


class CheckMinWords(Agent):
    """A gate: pass when a text has at least ``min_words`` words."""

    name = "check.min_words"
    description = "Gate: passes when the word count reaches params.min_words."
    gate = True

    class Input(_Strict):
        words: int = Field(ge=0)

    class Output(_Strict):
        passed: bool
        reasons: list[str]

    class Params(_Strict):
        min_words: int = Field(default=1, ge=0)

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        params: CheckMinWords.Params = ctx.params  # type: ignore[assignment]
        if input.words >= params.min_words:
            return self.Output(passed=True, reasons=[f"{input.words} >= {params.min_words} words"])
        return self.Output(
            passed=False, reasons=[f"only {input.words} words, fewer than {params.min_words}"]
        )


AGENTS: list[type[Agent]] = [Echo, TextNormalize, TextStats, CheckMinWords]
