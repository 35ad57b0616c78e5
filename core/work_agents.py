"""The agents of the night's real work, in the job's own git worktree.

``plan.validate`` checks a job before anything runs; ``doc.frontmatter`` has the local model
describe a Markdown file and writes YAML frontmatter into it; ``test`` is the real check (the
frontmatter parses and is complete, or pytest passes) — never the model's opinion;
``review.peer`` is one of two independent reviewers of the change; ``merge.gate`` merges the job's
branch into the target only when the tests passed, both reviewers passed it and merges are not
paused, and otherwise leaves it waiting for the morning with the reason.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .agents import Agent, NodeContext
from .control import Control, ControlFile
from .errors import NodeError
from .model_agents import DocDescribe
from .safecall import ask
from .tools import TOOLS, ToolError, Workspace

__all__ = ["AGENTS"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _workspace(ctx: NodeContext):
    if ctx.workspace is None:
        raise NodeError(ctx.node, f"{ctx.node} needs the job's git worktree")
    return ctx.workspace


def split_frontmatter(text: str) -> tuple[dict[str, Any] | None, str]:
    """(frontmatter, body) of a Markdown text; (None, text) when it has none."""
    if not text.startswith("---\n"):
        return None, text
    end = text.find("\n---\n", 4)
    if end < 0:
        return None, text
    try:
        meta = yaml.safe_load(text[4:end])
    except yaml.YAMLError:
        return None, text
    return (meta if isinstance(meta, dict) else None), text[end + 5 :]


class PlanValidate(Agent):
    name = "plan.validate"
    description = "Gate: checks the job's input (the file exists in the worktree) and plans it."
    gate = True
    uses_workspace = True

    class Input(_Strict):
        path: str
        task: str | None = None

    class Output(_Strict):
        passed: bool
        reasons: list[str]
        task: str
        plan: list[str]

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        ws = Workspace(_workspace(ctx).path)
        task = input.task or f"write YAML frontmatter (title, description, tags) for {input.path}"
        try:
            target = ws.resolve(input.path)
        except ToolError as exc:
            return self.Output(passed=False, reasons=[exc.message], task=task, plan=[])
        if not target.is_file():
            return self.Output(
                passed=False, reasons=[f"no file {input.path!r}"], task=task, plan=[]
            )
        return self.Output(
            passed=True,
            reasons=[f"{input.path} exists ({target.stat().st_size} bytes)"],
            task=task,
            plan=[task, "check it", "two reviews", "merge"],
        )


class DocFrontmatter(Agent):
    name = "doc.frontmatter"
    description = "Has the model describe a Markdown file and writes YAML frontmatter into it."
    uses_model = True
    uses_workspace = True

    class Input(_Strict):
        path: str

    class Output(_Strict):
        path: str
        title: str
        description: str
        tags: list[str]
        commit: str | None

    class Params(_Strict):
        max_tokens: int = Field(default=512, ge=16, le=4096)
        adapter: str | None = None

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        params: DocFrontmatter.Params = ctx.params  # type: ignore[assignment]
        job = _workspace(ctx)
        path = Workspace(job.path).resolve(input.path, for_write=True)
        _, body = split_frontmatter(path.read_text(encoding="utf-8"))
        meta = await ask(
            ctx.model(),
            [
                {"role": "system", "content": DocDescribe.SYSTEM},
                {"role": "user", "content": body[:6000]},
            ],
            DocDescribe.Output,
            log=ctx.calls,
            max_tokens=params.max_tokens,
            adapter=params.adapter,
        )
        front = yaml.safe_dump(meta.model_dump(), sort_keys=False, allow_unicode=True)
        path.write_text(f"---\n{front}---\n{body}", encoding="utf-8")
        commit = await asyncio.to_thread(job.commit, f"docs: frontmatter for {input.path}")
        return self.Output(path=input.path, commit=commit, **meta.model_dump())


class Test(Agent):
    name = "test"
    description = "Gate: the real check — frontmatter that parses and is complete, or pytest."
    gate = True
    uses_workspace = True

    class Input(_Strict):
        kind: Literal["docs", "code"]
        path: str | None = None

    class Output(_Strict):
        passed: bool
        reasons: list[str]
        output: str = ""

    class Params(_Strict):
        timeout_s: float = Field(default=120.0, gt=0)

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        params: Test.Params = ctx.params  # type: ignore[assignment]
        ws = Workspace(_workspace(ctx).path)
        if input.kind == "code":
            try:
                result = await asyncio.to_thread(
                    TOOLS["run_tests"],
                    ws,
                    TOOLS["run_tests"].Args(target=input.path or ""),
                    timeout_s=params.timeout_s,
                )
            except ToolError as exc:
                return self.Output(passed=False, reasons=[exc.message])
            summary = result["output"].strip().splitlines()[-1:] or ["no output"]
            return self.Output(passed=result["passed"], reasons=summary, output=result["output"])
        if not input.path:
            return self.Output(passed=False, reasons=["a docs test needs the file's path"])
        text = ws.resolve(input.path).read_text(encoding="utf-8")
        meta, body = split_frontmatter(text)
        problems = []
        if meta is None:
            problems.append("no YAML frontmatter at the top of the file")
        else:
            for key in ("title", "description"):
                if not isinstance(meta.get(key), str) or not meta[key].strip():
                    problems.append(f"frontmatter has no {key}")
            tags = meta.get("tags")
            if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
                problems.append("frontmatter has no list of tags")
        if not body.strip():
            problems.append("the document's body is gone")
        return self.Output(
            passed=not problems, reasons=problems or ["frontmatter parses and is complete"]
        )


class ReviewPeer(Agent):
    name = "review.peer"
    description = "Gate and reviewer: the model judges the job's change (two of them make κ)."
    gate = True
    reviewer = True
    uses_model = True
    uses_workspace = True

    class Input(_Strict):
        task: str = "the change"

    class Output(BaseModel):
        passed: bool
        reasons: list[str] = Field(min_length=1, max_length=4)

    class Params(_Strict):
        instructions: str = "Judge whether the change does what the task asks, and nothing else."
        max_tokens: int = Field(default=256, ge=16, le=4096)
        adapter: str | None = None

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        params: ReviewPeer.Params = ctx.params  # type: ignore[assignment]
        diff = await asyncio.to_thread(_workspace(ctx).diff)
        if not diff.strip():
            return self.Output(passed=False, reasons=["the change is empty"])
        return await ask(
            ctx.model(),
            [
                {
                    "role": "system",
                    "content": f"You review changes. {params.instructions} Reply with one JSON "
                    "object: passed (true or false) and reasons (1 to 4 short sentences).",
                },
                {"role": "user", "content": f"Task: {input.task}\n\nChange:\n{diff}"},
            ],
            self.Output,
            log=ctx.calls,
            max_tokens=params.max_tokens,
            adapter=params.adapter,
        )


class MergeGate(Agent):
    name = "merge.gate"
    description = "Merges the job's branch when tests and both reviews passed and merges run."
    uses_workspace = True

    class Input(_Strict):
        tests_passed: bool
        review_a: bool
        review_b: bool

    class Output(_Strict):
        merged: bool
        waiting: bool
        reason: str
        branch: str
        commit: str | None = None
        conflict: list[str] = []
        repo: str | None = None
        """The target repository."""
        target: str | None = None
        """The branch it merges into."""
        files: list[str] = []
        """The files the change touches."""
        added: int = 0
        removed: int = 0

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        job = _workspace(ctx)
        files, added, removed = await asyncio.to_thread(job.repo.diff_stat, job.branch, job.target)
        where = {
            "branch": job.branch,
            "repo": str(job.repo.path),
            "target": job.target,
            "files": files,
            "added": added,
            "removed": removed,
        }

        def wait(reason: str, conflict: list[str] | None = None) -> MergeGate.Output:
            return self.Output(
                merged=False, waiting=True, reason=reason, conflict=conflict or [], **where
            )

        control = ControlFile(ctx.artifacts).read() if ctx.artifacts is not None else None
        why_not = merge_refusal(
            tests_passed=input.tests_passed,
            reviews=(input.review_a, input.review_b),
            control=control,
        )
        if why_not:
            return wait(why_not)
        result = await asyncio.to_thread(
            job.repo.merge, job.branch, job.target, f"Merge {job.branch} ({ctx.flow})"
        )
        if not result.merged:
            what = ", ".join(result.conflict) or result.reason
            return wait(f"cannot merge into {job.target}: {what}", result.conflict)
        return self.Output(
            merged=True,
            waiting=False,
            reason=result.reason or f"merged into {job.target}",
            commit=result.commit,
            **where,
        )


def merge_refusal(
    *, tests_passed: bool | None, reviews: tuple[bool | None, bool | None], control: Control | None
) -> str | None:
    """The one rule the merge gate and the morning review share: why a change may not merge by
    itself (None: it may). An operator's merge by hand overrides it."""
    if not tests_passed:
        return "its tests did not pass"
    if not all(reviews):
        return "both reviewers must pass it"
    if control is not None and control.merges_paused:
        return f"merges are paused ({control.merges_paused_reason or 'by hand'})"
    return None


class Codegen(Agent):
    name = "codegen"
    description = "Makes a small code change with the workspace tools (the tool loop)."
    uses_model = True
    uses_workspace = True

    class Input(_Strict):
        task: str
        files: list[str] = []
        """Files to show the model up front (the code and its test, say)."""

    class Output(_Strict):
        summary: str
        commit: str | None
        files: list[str]
        steps: int

    class Answer(BaseModel):
        summary: str = Field(min_length=1, max_length=300)

    class Params(_Strict):
        max_steps: int = Field(default=6, ge=1, le=50)
        max_tokens: int = Field(default=1024, ge=64, le=8192)
        test_timeout_s: float = Field(default=60.0, gt=0)
        adapter: str | None = None

    SYSTEM = (
        "You fix small bugs in Python code. Change only what the task needs: prefer edit_file "
        "with a short unique old text; run_tests to check; then give the final answer with a "
        "one-sentence summary of the change."
    )

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        from .toolloop import run_tool_loop

        params: Codegen.Params = ctx.params  # type: ignore[assignment]
        job = _workspace(ctx)
        ws = Workspace(job.path)
        shown = []
        for rel in input.files:
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
        return self.Output(summary=summary, commit=commit, files=files, steps=result.steps)


AGENTS: list[type[Agent]] = [PlanValidate, DocFrontmatter, Codegen, Test, ReviewPeer, MergeGate]
