"""The night's gates: deterministic checks, never the model's opinion.

``plan.validate`` checks a job before anything runs; ``test`` is the real check (the
frontmatter parses and is complete, or the repository's tests pass with no test edited and no
test's answer hard-coded, :mod:`pantheon.core.work.hardcode`); ``merge.gate`` merges
the job's branch into the target only when the tests passed, both reviewers passed it and
merges are not paused, and otherwise leaves it waiting for the morning with the reason.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import Field

from pantheon.core.agents.base import Agent, NodeContext, StrictModel, require_workspace
from pantheon.core.errors import NodeError
from pantheon.core.store.control import Control, ControlFile
from pantheon.core.work.doccheck import check_frontmatter, failed_checks, split_frontmatter
from pantheon.core.work.git import GitError
from pantheon.core.work.grounding import GROUNDED_MIN
from pantheon.core.work.hardcode import HardCoded, hard_coded, verdict
from pantheon.core.work.tools import ToolError, Workspace

__all__ = ["AGENTS", "merge_refusal"]


class PlanValidate(Agent):
    name = "plan.validate"
    description = "Gate: checks the job's input (the file exists in the worktree) and plans it."
    gate = True
    uses_workspace = True

    class Input(StrictModel):
        path: str
        task: str | None = None

    class Output(StrictModel):
        passed: bool
        reasons: list[str]
        task: str
        plan: list[str]

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        ws = Workspace(require_workspace(ctx).path)
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


class Test(Agent):
    name = "test"
    description = (
        "Gate: the real checks — frontmatter a careful reviewer would pass, or the tests pass, "
        "no test file changed and no test's answer is hard-coded."
    )
    gate = True
    uses_workspace = True

    class Input(StrictModel):
        kind: Literal["docs", "code"]
        path: str | None = None
        """The document (docs), or the test file or node id (code)."""
        test_command: str | None = None
        """The repository's test command (code; else its pyproject.toml's, else pytest)."""
        guard: list[str] | None = None
        """The test files that ran the file to fix and passed before (code; from the traced
        suite): they must still pass. None: the whole suite runs."""

    class Output(StrictModel):
        passed: bool
        reasons: list[str]
        output: str = ""
        checks: dict[str, bool] = Field(default_factory=dict)
        """Each check by name, and whether it passed."""

    class Params(StrictModel):
        timeout_s: float = Field(default=120.0, gt=0)
        regressions: bool = True
        """Run the other tests too (code): a change that breaks one does not pass."""
        regression_timeout_s: float = Field(default=300.0, gt=0)
        grounded_min: float = Field(default=GROUNDED_MIN, ge=0.0, le=1.0)
        """Docs: the share of the description's content words the page must use (0: not
        checked; the night's ``gates.grounding_min`` when the node gives none)."""

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        params: Test.Params = ctx.params  # type: ignore[assignment]
        job = require_workspace(ctx)
        ws = Workspace(job.path)
        if input.kind == "code":
            return await self._code(input, job, params, ctx.node)
        if not input.path:
            return self.Output(passed=False, reasons=["a docs test needs the file's path"])
        text = ws.resolve(input.path).read_text(encoding="utf-8")
        meta, body = split_frontmatter(text)
        checks = check_frontmatter(meta, body, grounded_min=params.grounded_min)
        problems = failed_checks(checks)
        return self.Output(
            passed=not problems,
            reasons=problems or ["the frontmatter passes every check"],
            checks={c.name: c.passed for c in checks},
        )

    async def _code(self, input: Input, job: Any, params: Params, node: str) -> Output:
        from pantheon.core.work.regress import check_regressions
        from pantheon.core.work.sandbox import SandboxError
        from pantheon.core.work.suite import UntraceableError
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
        sources = [f for f in changed if f.endswith(".py") and f not in touched_tests]
        found = await asyncio.to_thread(_hard_coded, job, sources, test_file)
        ok, said = verdict(found)
        checks["no hard-coded test answers"] = ok
        if said:
            reasons.append(said)
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
        if result.passed and params.regressions:
            try:
                check = await asyncio.to_thread(
                    check_regressions,
                    command,
                    job.path,
                    own=input.path or "",
                    guard=input.guard,
                    original=job.original,
                    changed=changed,
                    timeout_s=params.regression_timeout_s,
                )
            except UntraceableError as exc:
                reasons.append(f"the other tests were not run: {exc.message}")
            else:
                checks["no other test broken"] = check.passed
                reasons.append(check.reason())
        return self.Output(
            passed=all(checks.values()), reasons=reasons, output=result.output, checks=checks
        )


def _hard_coded(job: Any, sources: list[str], test_file: str) -> list[HardCoded]:
    """The branches the change adds to ``sources`` that answer fixed arguments by rote."""
    test_path = job.path / test_file if test_file else None
    try:
        tests = test_path.read_text(encoding="utf-8") if test_path and test_path.is_file() else None
    except (OSError, UnicodeDecodeError):
        tests = None
    found: list[HardCoded] = []
    for rel in sources:
        try:
            after = (job.path / rel).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # deleted or not text: nothing to read
        try:
            before = job.original(rel) or ""
        except GitError:
            before = ""
        found += hard_coded(before, after, tests)
    return found


class MergeGate(Agent):
    name = "merge.gate"
    description = "Merges the job's branch when tests and both reviews passed and merges run."
    uses_workspace = True

    class Input(StrictModel):
        tests_passed: bool
        review_a: bool
        review_b: bool

    class Output(StrictModel):
        merged: bool
        waiting: bool
        reason: str
        branch: str
        commit: str | None = None
        conflict: list[str] = Field(default_factory=list)
        repo: str | None = None
        """The target repository."""
        remote: str | None = None
        """The shared git remote the change lands on, when the night has one."""
        target: str | None = None
        """The branch it merges into."""
        files: list[str] = Field(default_factory=list)
        """The files the change touches."""
        added: int = 0
        removed: int = 0

    async def run(self, input: Input, ctx: NodeContext) -> Output:
        job = require_workspace(ctx)
        files, added, removed = await asyncio.to_thread(job.repo.diff_stat, job.branch, job.target)
        where = {
            "branch": job.branch,
            "repo": str(job.repo.path),
            "target": job.target,
            "remote": job.remote,
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
        result = await asyncio.to_thread(job.land, f"Merge {job.branch} ({ctx.flow})")
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


AGENTS: list[type[Agent]] = [PlanValidate, Test, MergeGate]
