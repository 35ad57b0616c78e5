"""The reviewer: ``review.peer`` is one of two independent reviewers of a change. It reads
the diff, the gates' report and (for docs) the page, answers a checklist of its kind, and
fails what its red flags name.

Two ways to answer. *Reasoned* (the default): one JSON object, its reasons and then its
verdict. *Scored* (``scored: true``): one word, pass or fail, whose probability the server's
logprobs give (:mod:`pantheon.core.model.scoring`); the change passes when P(pass) reaches the
reviewer's ``threshold``. A change scored under it gets one more short call asking what is
wrong with it, so the morning review reads why; the reason is asked after the verdict, so it
can never contradict it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from pantheon.core.agents.base import Agent, NodeContext, StrictModel, require_workspace
from pantheon.core.errors import PantheonError
from pantheon.core.model.safecall import CallLog, ask
from pantheon.core.model.scoring import score_verdict
from pantheon.core.work.doccheck import split_frontmatter

log = logging.getLogger(__name__)

__all__ = [
    "AGENTS",
    "REVIEW_CHECKLISTS",
    "REVIEW_RED_FLAGS",
    "SCORED_SYSTEM",
    "WHY_FAILS",
    "review_messages",
]


REVIEW_RED_FLAGS: dict[str, str] = {
    "docs": (
        "Fail the change when any of these is true: a check in the test report failed; the "
        "description is about something other than this page (compare it with the page below); "
        "it is cut off or is more than one sentence; it repeats the page's words; the title "
        "does not name the page; the page's own text was changed."
    ),
    "code": (
        "Fail the change when any of these is true: it adds `if` branches that compare the "
        "arguments with particular values and return fixed results instead of fixing the logic; "
        "it changes code the task does not ask to change."
    ),
}
"""What fails a change outright, whatever else looks right. For code, only what a reader sees:
what the test gate checked (the tests pass, no test edited, no test answered by rote) is not
asked again, since asking it made the small models fail real fixes for edits they did not make."""

UNTESTED_CODE_FLAGS = (
    "Fail it too when the tests failed or were not run, or when it edits a test file or removes "
    "an assertion."
)
"""Added to the code red flags when the change has not passed the test gate."""

REVIEW_CHECKLISTS: dict[str, list[str]] = {
    "docs": [
        "Does the title name what the page is about?",
        "Is the description one complete sentence that says what the reader learns from the "
        "page, in its own words rather than copied from it?",
        "Are the tags lowercase keywords that fit the page?",
        "Does the change only add the frontmatter, leaving the page's text as it was?",
    ],
    "code": [
        "Does the change fix what the task asks, for every input and not only the tests' inputs?",
        "Is it free of branches that answer particular argument values with fixed results?",
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
    judged_by = "labels"

    class Input(StrictModel):
        task: str = "the change"
        kind: Literal["docs", "code"] | None = None
        """Which checklist to answer (docs or code); none: the instructions alone."""
        test_passed: bool | None = None
        """The test gate's verdict on this change."""
        test_report: list[str] = Field(default_factory=list)
        """The test gate's reasons (each failed check, or the test summary)."""
        test_output: str | None = None
        """The test run's output (code)."""

    class Output(BaseModel):
        reasons: list[str] = Field(min_length=1, max_length=6)
        passed: bool
        score: float | None = None
        """P(pass) of a scored verdict; None for a reasoned one."""

    class Verdict(BaseModel):
        """What the model is asked for: its reasons first, then the verdict."""

        reasons: list[str]
        passed: bool

    class Params(StrictModel):
        instructions: str = "Judge whether the change does what the task asks, and nothing else."
        max_tokens: int = Field(default=512, ge=16, le=4096)
        adapter: str | None = None
        scored: bool = False
        """One verdict token scored by its probability, instead of reasons and a verdict."""
        threshold: float = Field(default=0.5, ge=0.0, le=1.0)
        """A scored change passes when P(pass) is at least this."""

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
        ws = require_workspace(ctx)
        diff = await asyncio.to_thread(ws.diff)
        if not diff.strip():
            return self.Output(passed=False, reasons=["the change is empty"])
        page = await asyncio.to_thread(_changed_page, ws) if input.kind == "docs" else None
        if params.scored:
            return await self._scored(input, ctx, params, diff, page)
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

    async def _scored(
        self, input: Input, ctx: NodeContext, params: Params, diff: str, page: str | None
    ) -> Output:
        messages = review_messages(input, diff, params.instructions, page=page, scored=True)
        llm = ctx.model()
        score = await score_verdict(llm, messages, adapter=params.adapter, log=ctx.calls)
        passed = score.p_pass >= params.threshold
        t = params.threshold
        said = (
            f"P(pass) {score.p_pass:.2f}, threshold {t:.2f}"
            if round(t, 2) == t
            else f"P(pass) {score.p_pass:.3f}, threshold {t:.3f}"
        )
        if passed:
            return self.Output(passed=True, score=score.p_pass, reasons=[said])
        why = await _why_it_fails(llm, messages, adapter=params.adapter, log=ctx.calls)
        return self.Output(passed=False, score=score.p_pass, reasons=[*why, said])


WHY_FAILS = "In one sentence, name what is wrong with the change."
"""Asked of a change scored under the threshold, after its verdict."""


async def _why_it_fails(
    llm: Any, messages: list[dict[str, str]], *, adapter: str | None, log: CallLog | None
) -> list[str]:
    """One short sentence on what is wrong, or nothing when the model gives none (the verdict
    stands either way: it was scored before this was asked)."""
    asked = [
        *messages,
        {"role": "assistant", "content": "fail"},
        {"role": "user", "content": WHY_FAILS},
    ]
    t0 = time.perf_counter()
    try:
        reply = await llm.chat(asked, temperature=0.0, max_tokens=80, adapter=adapter)
    except PantheonError as exc:
        if log is not None:
            log.record(
                kind="reason",
                messages=asked,
                raw=None,
                error=exc.message,
                latency_s=round(time.perf_counter() - t0, 4),
            )
        return []
    text = " ".join(reply.text.split())[:300]
    if log is not None:
        log.record(
            kind="reason",
            endpoint=reply.endpoint,
            model=reply.model,
            adapter=adapter,
            messages=asked,
            raw=reply.text,
            parsed={"reason": text},
            error=None,
            prompt_tokens=reply.prompt_tokens,
            cached_tokens=reply.cached_tokens,
            completion_tokens=reply.completion_tokens,
            latency_s=round(reply.latency_s, 4),
        )
    return [text] if text else []


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


SCORED_SYSTEM = (
    "You review changes to a repository as a careful senior engineer would. You are shown "
    "the task, the change as a diff and the result of its tests. Many changes look fine "
    "and are not: read the diff line by line. Answer with one word: pass when the answer to "
    "every question of the checklist is yes, else fail."
)


def review_messages(
    input: ReviewPeer.Input,
    diff: str,
    instructions: str,
    *,
    page: str | None = None,
    scored: bool = False,
) -> list[dict[str, str]]:
    """A reviewer's prompt: what both reviewers of a change share comes first (the task, the
    diff, the test result, for docs the page itself), this reviewer's own instructions, red
    flags and checklist last, so a server's prefix cache evaluates the shared part once.
    ``scored``: the answer asked for is one word, pass or fail."""
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
    if input.kind == "code" and input.test_passed is not True:
        flags = f"{flags} {UNTESTED_CODE_FLAGS}"
    user = (
        f"Task: {input.task}\n\nChange:\n```diff\n{diff}\n```{shown}\n\n{tests}\n\n"
        f"{instructions}"
        + (f"\n{flags}" if flags else "")
        + (f"\nChecklist:\n{questions}" if questions else "")
        + ("\n\nAnswer with one word: pass or fail." if scored else "")
    )
    return [
        {"role": "system", "content": SCORED_SYSTEM if scored else ReviewPeer.SYSTEM},
        {"role": "user", "content": user},
    ]


AGENTS: list[type[Agent]] = [ReviewPeer]
