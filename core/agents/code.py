"""The code writer: ``codegen`` fixes a function whose tests fail, in the job's worktree:
candidates asked of the local model (greedy, then sampled), each tested for real in the
sandbox, the smallest passing one kept; or a bounded tool loop.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import BaseModel, Field

from pantheon.core.agents.base import Agent, NodeContext, StrictModel, require_workspace
from pantheon.core.errors import NodeError
from pantheon.core.work.tools import TOOLS, ToolError, Workspace

__all__ = ["AGENTS"]


class Codegen(Agent):
    name = "codegen"
    description = (
        "Fixes the file under test until its failing tests pass: candidate fixes from the "
        "model, the real tests pick one (or the bounded tool loop)."
    )
    uses_model = True
    uses_workspace = True
    judged_by = "pass@1"

    class Input(StrictModel):
        task: str
        path: str | None = None
        """The file to fix."""
        test: str | None = None
        """Its test file (or node id): the tests that fail now and must pass."""
        test_command: str | None = None
        """The repository's test command (else its pyproject.toml's, else ``python -m pytest``)."""
        files: list[str] = Field(default_factory=list)
        """Files to show the model up front (the tool loop)."""
        suspects: list[dict[str, Any]] | None = None
        """The functions the failing tests ran, most suspicious first (path, name, start, end,
        score): a long file is shown in focus on them."""

    class Output(StrictModel):
        summary: str
        commit: str | None
        files: list[str]
        steps: int
        """Model calls made (candidates, or tool-loop steps)."""
        form: str = "whole_file"
        candidates: int = 1
        """Candidate fixes asked for."""
        passing: int = 0
        """Candidates whose tests passed."""
        chosen: int | None = None
        """The kept candidate (the smallest passing diff)."""

    class Answer(BaseModel):
        summary: str = Field(min_length=1, max_length=300)

    class Params(StrictModel):
        form: Literal["whole_file", "search_replace", "tools"] = "whole_file"
        """How the model gives its fix: the whole corrected file (or function) in a python
        block, SEARCH/REPLACE blocks, or JSON tool calls (the bounded tool loop)."""
        k: int = Field(default=8, ge=1, le=32)
        """Candidates at most: one greedy, then k-1 sampled at once when it fails."""
        temperature: float = Field(default=0.7, ge=0.0, le=2.0)
        """Of the sampled candidates (the first is always greedy)."""
        rounds: int = Field(default=1, ge=1, le=2)
        """2: the k candidates over two rounds, the second shown the best failing candidate
        with its own test output (self-debugging)."""
        name_bug: bool = False
        """Ask for one sentence naming the bug before the code."""
        hot_lines: bool = False
        """Quote the lines the failing tests run and the passing tests rarely do (from the
        job's suspects); off until it measures better than without."""
        max_steps: int = Field(default=6, ge=1, le=50)
        """The tool loop's steps at most."""
        max_tokens: int = Field(default=2048, ge=64, le=8192)
        test_timeout_s: float = Field(default=60.0, gt=0)
        adapter: str | None = None

    SYSTEM = (
        "You fix small bugs in Python code. Change only what the task needs: prefer edit_file "
        "with a short unique old text; run_tests to check; then give the final answer with a "
        "one-sentence summary of the change."
    )

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        params: Codegen.Params = ctx.params  # type: ignore[assignment]
        if params.form == "tools":
            return await self._tool_loop(input, ctx, params)
        from pantheon.core.work.codefix import FixForm, run_fix
        from pantheon.core.work.sandbox import SandboxError
        from pantheon.core.work.testcmd import TestCommandError, resolve_test_command

        job = require_workspace(ctx)
        if not input.path or not input.test:
            raise NodeError(ctx.node, "codegen needs the file to fix (path) and its test (test)")
        ws = Workspace(job.path)
        for rel in (input.path, input.test.split("::", 1)[0]):
            try:
                if not ws.resolve(rel).is_file():
                    raise NodeError(ctx.node, f"no file {rel!r} in the worktree")
            except ToolError as exc:
                raise NodeError(ctx.node, exc.message) from None
        try:
            command = resolve_test_command(job.repo.path, input.test_command)
        except (TestCommandError, SandboxError) as exc:
            raise NodeError(ctx.node, exc.message) from None
        result = await run_fix(
            ctx.model(),
            root=job.path,
            path=input.path,
            test_path=input.test,
            task=input.task,
            command=command,
            form=FixForm(params.form),
            k=params.k,
            temperature=params.temperature,
            max_tokens=params.max_tokens,
            timeout_s=params.test_timeout_s,
            adapter=params.adapter,
            log=ctx.calls,
            node=ctx.node,
            suspects=input.suspects or (),
            rounds=params.rounds,
            name_bug=params.name_bug,
            hot_lines=params.hot_lines,
        )
        chosen = result.chosen
        summary = (
            f"fix {input.path}: candidate {chosen.index + 1} of {len(result.candidates)} "
            f"({chosen.lines} line(s) changed) passes {input.test}"
        )
        commit = await asyncio.to_thread(job.commit, f"codegen: {summary[:72]}")
        files = await asyncio.to_thread(job.files) if commit else []
        return self.Output(
            summary=summary,
            commit=commit,
            files=files,
            steps=len(result.candidates),
            form=params.form,
            candidates=len(result.candidates),
            passing=result.passing,
            chosen=chosen.index,
        )

    async def _tool_loop(self, input: Input, ctx: NodeContext, params: Params) -> Output:
        from pantheon.core.work.sandbox import SandboxError, code_sandbox
        from pantheon.core.work.toolloop import run_tool_loop

        try:
            code_sandbox()  # run_tests runs the model's code: refused before the first call
        except SandboxError as exc:
            raise NodeError(ctx.node, exc.message) from None
        job = require_workspace(ctx)
        ws = Workspace(job.path)
        shown = []
        for rel in input.files or [f for f in (input.path, input.test) if f]:
            try:
                text = ws.resolve(rel).read_text(encoding="utf-8")
            except (ToolError, OSError) as exc:
                raise NodeError(ctx.node, f"cannot show {rel!r} to the model: {exc}") from None
            shown.append(f"--- {rel}\n{text}")
        task = input.task + ("\n\n" + "\n".join(shown) if shown else "")
        result = await run_tool_loop(
            ctx.model(),
            system=self.SYSTEM,
            task=task,
            tools=TOOLS,
            output=self.Answer,
            workspace=ws,
            log=ctx.calls,
            node=ctx.node,
            max_steps=params.max_steps,
            max_tokens=params.max_tokens,
            adapter=params.adapter,
            test_timeout_s=params.test_timeout_s,
            require_change=True,
        )
        summary = result.answer.summary  # type: ignore[attr-defined]
        commit = await asyncio.to_thread(job.commit, f"codegen: {summary[:72]}")
        files = await asyncio.to_thread(job.files) if commit else []
        return self.Output(
            summary=summary, commit=commit, files=files, steps=result.steps, form="tools"
        )


AGENTS: list[type[Agent]] = [Codegen]
