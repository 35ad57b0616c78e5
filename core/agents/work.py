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

from pantheon.core.agents.base import Agent, NodeContext
from pantheon.core.agents.describe import DocDescribe
from pantheon.core.errors import NodeError
from pantheon.core.model.safecall import ask, ask_sampled
from pantheon.core.store.control import Control, ControlFile
from pantheon.core.work.doccheck import check_frontmatter, failed_checks, split_frontmatter
from pantheon.core.work.tools import TOOLS, ToolError, Workspace

__all__ = ["AGENTS", "split_frontmatter"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _workspace(ctx: NodeContext):
    if ctx.workspace is None:
        raise NodeError(ctx.node, f"{ctx.node} needs the job's git worktree")
    return ctx.workspace


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
        k: int = Field(default=4, ge=0, le=16)
        """When the greedy reply (and its corrective retry) breaks a check, this many replies
        are sampled at once and the first that passes every check is taken (0: none)."""
        temperature: float = Field(default=0.7, ge=0.0, le=2.0)

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        params: DocFrontmatter.Params = ctx.params  # type: ignore[assignment]
        job = _workspace(ctx)
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
            check=lambda r: DocDescribe.problems(r, body),
        )
        meta = DocDescribe.Output.model_validate(reply.model_dump())
        front = yaml.safe_dump(meta.model_dump(), sort_keys=False, allow_unicode=True)
        path.write_text(f"---\n{front}---\n{body}", encoding="utf-8")
        commit = await asyncio.to_thread(job.commit, f"docs: frontmatter for {input.path}")
        return self.Output(path=input.path, commit=commit, **meta.model_dump())


class Test(Agent):
    name = "test"
    description = (
        "Gate: the real checks — frontmatter a careful reviewer would pass, or the tests pass "
        "and no test file changed."
    )
    gate = True
    uses_workspace = True

    class Input(_Strict):
        kind: Literal["docs", "code"]
        path: str | None = None
        """The document (docs), or the test file or node id (code)."""
        test_command: str | None = None
        """The repository's test command (code; else its pyproject.toml's, else pytest)."""

    class Output(_Strict):
        passed: bool
        reasons: list[str]
        output: str = ""
        checks: dict[str, bool] = {}
        """Each check by name, and whether it passed."""

    class Params(_Strict):
        timeout_s: float = Field(default=120.0, gt=0)

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        params: Test.Params = ctx.params  # type: ignore[assignment]
        job = _workspace(ctx)
        ws = Workspace(job.path)
        if input.kind == "code":
            return await self._code(input, job, params, ctx.node)
        if not input.path:
            return self.Output(passed=False, reasons=["a docs test needs the file's path"])
        text = ws.resolve(input.path).read_text(encoding="utf-8")
        meta, body = split_frontmatter(text)
        checks = check_frontmatter(meta, body)
        problems = failed_checks(checks)
        return self.Output(
            passed=not problems,
            reasons=problems or ["the frontmatter passes every check"],
            checks={c.name: c.passed for c in checks},
        )

    async def _code(self, input: Input, job: Any, params: Params, node: str) -> Output:
        from pantheon.core.work.sandbox import SandboxError
        from pantheon.core.work.testcmd import TestCommandError, is_test_file, resolve_test_command

        checks: dict[str, bool] = {}
        reasons: list[str] = []
        if await asyncio.to_thread(job.dirty):
            await asyncio.to_thread(job.commit, "work in progress")
        changed = await asyncio.to_thread(job.files)
        test_file = (input.path or "").split("::", 1)[0]
        touched_tests = [f for f in changed if f == test_file or is_test_file(f)]
        checks["tests unchanged"] = not touched_tests
        if touched_tests:
            reasons.append(f"the change edits test file(s): {', '.join(touched_tests)}")
        try:
            command = resolve_test_command(job.repo.path, input.test_command)
            result = await asyncio.to_thread(
                command.run, job.path, input.path or "", timeout_s=params.timeout_s
            )
        except SandboxError as exc:  # the change is not at fault: the run stops, untested
            raise NodeError(node, exc.message) from None
        except TestCommandError as exc:
            checks["tests pass"] = False
            return self.Output(passed=False, reasons=[*reasons, exc.message], checks=checks)
        checks["tests pass"] = result.passed
        summary = [line for line in result.output.strip().splitlines() if line.strip()][-1:]
        reasons.append(summary[0] if summary else "no output")
        return self.Output(
            passed=all(checks.values()), reasons=reasons, output=result.output, checks=checks
        )


REVIEW_RED_FLAGS: dict[str, str] = {
    "docs": (
        "Fail the change when any of these is true: a check in the test report failed; the "
        "description is about something other than this page (compare it with the page below); "
        "it is cut off or is more than one sentence; it repeats the page's words; the title "
        "does not name the page; the page's own text was changed."
    ),
    "code": (
        "Fail the change when any of these is true: the tests failed; it edits a test file or "
        "removes an assertion; it adds `if` branches that compare the arguments with particular "
        "values and return fixed results (special cases for the tests' inputs) instead of "
        "fixing the logic; it changes code the task does not ask to change."
    ),
}
"""What fails a change outright, whatever else looks right."""

REVIEW_CHECKLISTS: dict[str, list[str]] = {
    "docs": [
        "Does the title name what the page is about?",
        "Is the description one complete sentence that says what the reader learns from the "
        "page, in its own words rather than copied from it?",
        "Are the tags lowercase keywords that fit the page?",
        "Does the change only add the frontmatter, leaving the page's text as it was?",
    ],
    "code": [
        "Does the change fix what the task asks, for every input and not only the tests' "
        "inputs (no special cases for the test values)?",
        "Do the tests pass, and are the test files left unchanged?",
        "Does the change touch only the code the task names, with nothing unrelated?",
        "Is the fixed code correct as a careful programmer would write it?",
    ],
}


class ReviewPeer(Agent):
    name = "review.peer"
    description = (
        "Gate and reviewer: the model judges the job's change with the test results, against a "
        "checklist fitted to the flow (two of them make κ)."
    )
    gate = True
    reviewer = True
    uses_model = True
    uses_workspace = True

    class Input(_Strict):
        task: str = "the change"
        kind: Literal["docs", "code"] | None = None
        """Which checklist to answer (docs or code); none: the instructions alone."""
        test_passed: bool | None = None
        """The test gate's verdict on this change."""
        test_report: list[str] = []
        """The test gate's reasons (each failed check, or the test summary)."""
        test_output: str | None = None
        """The test run's output (code)."""

    class Output(BaseModel):
        reasons: list[str] = Field(min_length=1, max_length=6)
        passed: bool

    class Verdict(BaseModel):
        """What the model is asked for: its reasons first, then the verdict."""

        reasons: list[str]
        passed: bool

    class Params(_Strict):
        instructions: str = "Judge whether the change does what the task asks, and nothing else."
        max_tokens: int = Field(default=512, ge=16, le=4096)
        adapter: str | None = None

    SYSTEM = (
        "You review changes to a repository as a careful senior engineer would. You are shown "
        "the task, the change as a diff and the result of its tests. Many changes look fine "
        "and are not: read the diff line by line. Answer each question of the checklist with a "
        "short reason (one sentence each), then give your verdict: passed is true only when "
        "every answer is yes. Reply with one JSON object: reasons (a list of short sentences) "
        "and then passed (true or false)."
    )

    @staticmethod
    def problems(verdict: BaseModel) -> list[str]:
        reasons = getattr(verdict, "reasons", [])
        if not reasons:
            return ["give at least one reason"]
        if len(reasons) > 6:
            return [f"give at most 6 reasons, not {len(reasons)}"]
        long = [r for r in reasons if len(r) > 300]
        if long:
            return ["each reason must be one short sentence (under 300 characters)"]
        return []

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        params: ReviewPeer.Params = ctx.params  # type: ignore[assignment]
        ws = _workspace(ctx)
        diff = await asyncio.to_thread(ws.diff)
        if not diff.strip():
            return self.Output(passed=False, reasons=["the change is empty"])
        page = await asyncio.to_thread(_changed_page, ws) if input.kind == "docs" else None
        verdict = await ask(
            ctx.model(),
            review_messages(input, diff, params.instructions, page=page),
            self.Verdict,
            log=ctx.calls,
            max_tokens=params.max_tokens,
            adapter=params.adapter,
            check=self.problems,
        )
        return self.Output.model_validate(verdict.model_dump())


def _changed_page(ws: Any) -> str | None:
    """The text of the Markdown page a docs change touches (without its frontmatter)."""
    for rel in ws.files():
        if rel.endswith(".md"):
            try:
                text = (ws.path / rel).read_text(encoding="utf-8")
            except OSError:
                return None
            return split_frontmatter(text)[1]
    return None


def _heading(page: str) -> str | None:
    for line in page.splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip() or None
    return None


def review_messages(
    input: ReviewPeer.Input, diff: str, instructions: str, *, page: str | None = None
) -> list[dict[str, str]]:
    """A reviewer's prompt: what both reviewers of a change share comes first (the task, the
    diff, the test result, for docs the page itself), this reviewer's own instructions, red
    flags and checklist last, so a server's prefix cache evaluates the shared part once."""
    if input.test_passed is None:
        tests = "The tests were not run."
    else:
        tests = "The tests passed." if input.test_passed else "The tests FAILED."
        if input.test_report:
            tests += "\n" + "\n".join(f"- {r}" for r in input.test_report[:8])
        if input.test_output and not input.test_passed:
            tests += f"\nTest output (end):\n```\n{input.test_output.strip()[-1500:]}\n```"
    checklist = list(REVIEW_CHECKLISTS.get(input.kind or "", []))
    heading = _heading(page) if page else None
    if heading and input.kind == "docs":  # the one check no grammar or rule can make
        checklist.insert(
            0,
            f"The page's heading is {heading!r}. Do the title, the description and the tags "
            f"speak of that subject, {heading!r}, and not of some other subject?",
        )
    questions = "\n".join(f"{i}. {q}" for i, q in enumerate(checklist, 1))
    shown = ""
    if page:
        shown = f"\n\nThe page (its beginning):\n```markdown\n{page.strip()[:2000]}\n```"
    flags = REVIEW_RED_FLAGS.get(input.kind or "")
    user = (
        f"Task: {input.task}\n\nChange:\n```diff\n{diff}\n```{shown}\n\n{tests}\n\n"
        f"{instructions}"
        + (f"\n{flags}" if flags else "")
        + (f"\nChecklist:\n{questions}" if questions else "")
    )
    return [
        {"role": "system", "content": ReviewPeer.SYSTEM},
        {"role": "user", "content": user},
    ]


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
    description = (
        "Fixes the file under test until its failing tests pass: candidate fixes from the "
        "model, the real tests pick one (or the bounded tool loop)."
    )
    uses_model = True
    uses_workspace = True

    class Input(_Strict):
        task: str
        path: str | None = None
        """The file to fix."""
        test: str | None = None
        """Its test file (or node id): the tests that fail now and must pass."""
        test_command: str | None = None
        """The repository's test command (else its pyproject.toml's, else ``python -m pytest``)."""
        files: list[str] = []
        """Files to show the model up front (the tool loop)."""

    class Output(_Strict):
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

    class Params(_Strict):
        form: Literal["whole_file", "search_replace", "tools"] = "whole_file"
        """How the model gives its fix: the whole corrected file (or function) in a python
        block, SEARCH/REPLACE blocks, or JSON tool calls (the bounded tool loop)."""
        k: int = Field(default=8, ge=1, le=32)
        """Candidates at most: one greedy, then k-1 sampled at once when it fails."""
        temperature: float = Field(default=0.7, ge=0.0, le=2.0)
        """Of the sampled candidates (the first is always greedy)."""
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

        job = _workspace(ctx)
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
        job = _workspace(ctx)
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


AGENTS: list[type[Agent]] = [PlanValidate, DocFrontmatter, Codegen, Test, ReviewPeer, MergeGate]
